/**
 * Every managed instance that still exists, one card each.
 */
import * as React from 'react';

import { EC2Model } from '../model';
import { IInstance, InstanceAction } from '../tokens';
import { InstanceCard } from './InstanceCard';

/** Properties of an {@link InstanceList}. */
export interface IInstanceListProps {
  model: EC2Model;
  onAction: (action: InstanceAction, instance: IInstance) => void;
}

/** The instances, newest first; terminated ones are gone from view. */
export function InstanceList(props: IInstanceListProps): JSX.Element {
  const { model, onAction } = props;
  const instances = model.instances.filter(
    instance => instance.phase !== 'terminated'
  );
  if (instances.length === 0) {
    return (
      <p className="jp-ec2-empty" data-testid="ec2-no-instances">
        No instances yet. Launch one below, or from a tile in the launcher.
      </p>
    );
  }
  return (
    <ul className="jp-ec2-instances" data-testid="ec2-instances">
      {instances.map(instance => (
        <InstanceCard
          key={instance.id}
          instance={instance}
          since={model.since(instance.id)}
          log={model.log(instance.id)}
          profileName={model.profile(instance.profile)?.display_name}
          onAction={onAction}
          model={model}
        />
      ))}
    </ul>
  );
}
