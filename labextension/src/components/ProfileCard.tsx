/**
 * One launch profile, as a selectable card.
 */
import * as React from 'react';

import { IProfile } from '../tokens';

/** Properties of a {@link ProfileCard}. */
export interface IProfileCardProps {
  profile: IProfile;
  selected: boolean;
  isDefault: boolean;
  onSelect: (name: string) => void;
}

/** The idle auto-stop in words (`0` turns it off). */
export function idleStopText(minutes: number): string {
  return minutes > 0 ? `after ${minutes} min` : 'off';
}

/** A card showing what a profile launches; clicking or Enter/Space selects it. */
export function ProfileCard(props: IProfileCardProps): JSX.Element {
  const { profile, selected, isDefault, onSelect } = props;
  const facts: Array<[string, string, string]> = [
    ['instance-type', 'Instance type', profile.instance_type],
    ['region', 'Region', profile.region],
    ['disk', 'Disk', `${profile.volume_gb} GB`],
    ['spot', 'Spot', profile.spot ? 'yes' : 'no'],
    ['idle-stop', 'Idle stop', idleStopText(profile.idle_stop_minutes)]
  ];
  const onKeyDown = (event: React.KeyboardEvent<HTMLLIElement>): void => {
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      onSelect(profile.name);
    }
  };
  return (
    <li
      className={`jp-ec2-profile${selected ? ' jp-mod-selected' : ''}`}
      role="option"
      aria-selected={selected}
      tabIndex={0}
      data-profile={profile.name}
      data-testid={`ec2-profile-${profile.name}`}
      onClick={() => onSelect(profile.name)}
      onKeyDown={onKeyDown}
    >
      <div className="jp-ec2-profile-header">
        <span className="jp-ec2-profile-name">{profile.display_name}</span>
        {isDefault && <span className="jp-ec2-badge">default</span>}
        {selected && (
          <span className="jp-ec2-badge jp-ec2-badge-selected">selected</span>
        )}
      </div>
      <dl className="jp-ec2-profile-facts">
        {facts.map(([key, label, value]) => (
          <div key={key} className="jp-ec2-fact" data-fact={key}>
            <dt>{label}</dt>
            <dd>{value}</dd>
          </div>
        ))}
      </dl>
    </li>
  );
}
