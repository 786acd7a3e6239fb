/**
 * The launch profiles of the server, one card each.
 */
import * as React from 'react';

import { IProfile } from '../tokens';
import { ProfileCard } from './ProfileCard';

/** Properties of a {@link ProfileList}. */
export interface IProfileListProps {
  profiles: ReadonlyArray<IProfile>;
  selected: string | null;
  defaultProfile: string | null;
  onSelect: (name: string) => void;
}

/** A list box of profile cards; the selected one carries `aria-selected`. */
export function ProfileList(props: IProfileListProps): JSX.Element {
  const { profiles, selected, defaultProfile, onSelect } = props;
  if (profiles.length === 0) {
    return (
      <p className="jp-ec2-empty">
        No launch profiles are configured. Add some with{' '}
        <code>c.EC2Launcher.profiles</code> in your Jupyter server config.
      </p>
    );
  }
  return (
    <ul
      className="jp-ec2-profiles"
      role="listbox"
      aria-label="Launch profiles"
      data-testid="ec2-profiles"
    >
      {profiles.map(profile => (
        <ProfileCard
          key={profile.name}
          profile={profile}
          selected={profile.name === selected}
          isDefault={profile.name === defaultProfile}
          onSelect={onSelect}
        />
      ))}
    </ul>
  );
}
