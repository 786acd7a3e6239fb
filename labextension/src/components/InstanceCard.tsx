/**
 * One managed instance: what it is, how far it has come, and what can be done to it.
 */
import * as React from 'react';

import {
  ACTION_LABELS,
  actionsFor,
  forwardText,
  formatElapsed,
  formatPrice,
  idleStopMinutes,
  phaseLabel
} from '../instances';
import { LogTail } from '../logtail';
import { IInstance, InstanceAction } from '../tokens';
import { EC2Model } from '../model';
import { WorkersControl } from '../workers';
import { LogView } from './LogView';

/** Properties of an {@link InstanceCard}. */
export interface IInstanceCardProps {
  instance: IInstance;
  /** When its current change of phase began (ms since the epoch), if it is changing. */
  since: number | null;
  /** Its live log, when shown. */
  log: LogTail | undefined;
  /** The display name of its profile, if the server still has that profile. */
  profileName: string | undefined;
  onAction: (action: InstanceAction, instance: IInstance) => void;
  /** The model, for the Dask workers control (absent: no workers control). */
  model?: EC2Model;
}

/** The current time, re-read every second while `active`. */
function useNow(active: boolean): number {
  const [now, setNow] = React.useState(() => Date.now());
  React.useEffect(() => {
    if (!active) {
      return undefined;
    }
    setNow(Date.now());
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(timer);
  }, [active]);
  return now;
}

/** A card with the instance's facts, a phase badge, progress, health, cost and actions. */
export function InstanceCard(props: IInstanceCardProps): JSX.Element {
  const { instance, since, log, profileName, onAction, model } = props;
  const changing = instance.pending;
  const now = useNow(changing);
  const progress = Math.max(0, Math.min(100, Math.round(instance.progress)));
  const price = formatPrice(instance.hourly_usd);
  const forward = forwardText(instance);
  const idleMinutes = idleStopMinutes(instance);
  const monthly = instance.cost?.stopped_monthly_usd;
  const diskCost =
    monthly === undefined || monthly === null ? null : `$${monthly.toFixed(2)}`;
  const terminatesAt = instance.terminates_at
    ? new Date(instance.terminates_at).toLocaleString()
    : null;
  const showProgress =
    changing || (instance.phase === 'failed' && progress > 0);
  const actions = actionsFor(instance);
  // A failure's message is the error shown below; the idle countdown has its own chip.
  const showMessage =
    !!instance.message &&
    idleMinutes === null &&
    !(instance.error !== null && instance.phase === 'failed');

  return (
    <li
      className={`jp-ec2-instance jp-ec2-phase-${instance.phase}`}
      data-testid="ec2-instance"
      data-instance-id={instance.id}
      data-phase={instance.phase}
      aria-label={`${instance.name}, ${instance.phase}`}
    >
      <div className="jp-ec2-instance-header">
        <span className="jp-ec2-instance-name">{instance.name}</span>
        <span
          className={`jp-ec2-phase jp-ec2-phase-badge-${instance.phase}`}
          data-testid="ec2-phase"
        >
          {phaseLabel(instance.phase)}
        </span>
        {price !== null && (
          <span
            className="jp-ec2-price"
            data-testid="ec2-price"
            title="What AWS charges per hour for this instance type"
          >
            {price}
          </span>
        )}
      </div>

      <dl className="jp-ec2-instance-facts">
        <div className="jp-ec2-fact" data-fact="profile">
          <dt>Profile</dt>
          <dd title={instance.profile}>{profileName ?? instance.profile}</dd>
        </div>
        <div className="jp-ec2-fact" data-fact="instance-type">
          <dt>Type</dt>
          <dd>{instance.instance_type}</dd>
        </div>
        <div className="jp-ec2-fact" data-fact="region">
          <dt>Region</dt>
          <dd>{instance.region}</dd>
        </div>
        <div className="jp-ec2-fact" data-fact="id">
          <dt>Instance</dt>
          <dd>
            <code>{instance.id}</code>
          </dd>
        </div>
      </dl>

      {showProgress && (
        <div
          className="jp-ec2-progress"
          role="progressbar"
          aria-label={`${instance.name} progress`}
          aria-valuemin={0}
          aria-valuemax={100}
          aria-valuenow={progress}
          data-testid="ec2-progress"
        >
          <div
            className="jp-ec2-progress-fill"
            style={{ width: `${progress}%` }}
          />
        </div>
      )}

      <div className="jp-ec2-status">
        {showMessage && (
          <span className="jp-ec2-message" data-testid="ec2-message">
            {instance.message}
          </span>
        )}
        {changing && since !== null && (
          <span
            className="jp-ec2-elapsed"
            data-testid="ec2-elapsed"
            title="Time since this step began"
          >
            {formatElapsed(now - since)}
          </span>
        )}
        {forward !== null && (
          <span
            className={`jp-ec2-forward jp-ec2-forward-${instance.tunnel?.state}`}
            data-testid="ec2-forward"
            data-state={instance.tunnel?.state}
          >
            {forward}
          </span>
        )}
        {instance.phase === 'stopped' && diskCost !== null && (
          <span
            className="jp-ec2-disk-cost"
            data-testid="ec2-disk-cost"
            title="A stopped instance still pays for its disk (an estimate)"
          >
            Disk: {diskCost}/month while stopped
          </span>
        )}
        {terminatesAt !== null && (
          <span
            className="jp-ec2-terminates"
            data-testid="ec2-terminates"
            title="terminate_stopped_after_days: its disk is snapshotted first"
          >
            {instance.termination?.state === 'snapshotting'
              ? 'Snapshotting its disk, then terminating'
              : `Snapshot and terminate on ${terminatesAt}`}
          </span>
        )}
        {idleMinutes !== null && (
          <span
            className="jp-ec2-idle"
            data-testid="ec2-idle"
            title="The instance stops itself when its notebook server stays idle"
          >
            Idle: stops in {idleMinutes} min
          </span>
        )}
      </div>

      {instance.termination?.error && (
        <div
          className="jp-ec2-instance-error"
          role="alert"
          data-testid="ec2-termination-error"
        >
          {instance.termination.error}
        </div>
      )}

      {instance.error !== null && (
        <div
          className="jp-ec2-instance-error"
          role="alert"
          data-testid="ec2-instance-error"
        >
          Failed at <strong>{instance.error.step}</strong>:{' '}
          {instance.error.message}
        </div>
      )}

      <div className="jp-ec2-actions" role="group" aria-label="Actions">
        {actions.map(action => {
          const pressed = action === 'log' ? log !== undefined : undefined;
          const label =
            action === 'log' && log !== undefined
              ? 'Hide log'
              : ACTION_LABELS[action];
          const tone =
            action === 'open'
              ? ' jp-mod-accept'
              : action === 'terminate'
                ? ' jp-mod-warn'
                : '';
          return (
            <button
              key={action}
              type="button"
              className={`jp-Button jp-mod-styled jp-ec2-action${tone}`}
              data-action={action}
              aria-pressed={pressed}
              onClick={() => onAction(action, instance)}
            >
              {label}
            </button>
          );
        })}
      </div>

      {model !== undefined && (
        <WorkersControl instance={instance} model={model} />
      )}

      {log !== undefined && <LogView tail={log} />}
    </li>
  );
}
