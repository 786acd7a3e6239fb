/**
 * The warning before an instance stops itself for idleness, with "Keep running 1 h".
 *
 * The countdown is the server's (`Instance.idle`); pressing the button asks the server to
 * postpone the stop on the instance itself (`POST instances/{id}/keepalive`), so it holds
 * even when this tab is closed afterwards.
 */
import { Notification } from '@jupyterlab/apputils';
import { IDisposable } from '@lumino/disposable';

import { EC2Model } from './model';
import { requestAPI } from './request';
import { IInstance } from './tokens';

/** How long before the idle stop the warning shows. */
export const IDLE_WARNING_SECONDS = 600;

/** How long "Keep running 1 h" postpones the stop, in minutes. */
export const KEEPALIVE_MINUTES = 60;

/** Whether an instance is about to stop itself: armed, not busy, at most 10 min left. */
export function aboutToIdleStop(instance: IInstance): boolean {
  const idle = instance.idle;
  return (
    idle !== null &&
    !idle.busy &&
    idle.seconds_left !== null &&
    idle.seconds_left <= IDLE_WARNING_SECONDS
  );
}

/** Shows one warning per instance about to stop itself; dismisses it once that is no longer so. */
export class IdleWarning implements IDisposable {
  constructor(model: EC2Model) {
    this._model = model;
    model.changed.connect(this._onChanged, this);
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._model.changed.disconnect(this._onChanged, this);
    this._shown.forEach(id => Notification.dismiss(id));
    this._shown.clear();
  }

  private _onChanged(): void {
    const due = new Map<string, IInstance>();
    for (const instance of this._model.instances) {
      if (aboutToIdleStop(instance)) {
        due.set(instance.id, instance);
      }
    }
    for (const [id, notification] of this._shown) {
      if (!due.has(id)) {
        Notification.dismiss(notification);
        this._shown.delete(id);
      }
    }
    for (const [id, instance] of due) {
      if (!this._shown.has(id)) {
        this._shown.set(id, this._warn(instance));
      }
    }
  }

  private _warn(instance: IInstance): string {
    const minutes = Math.max(
      1,
      Math.round((instance.idle?.seconds_left ?? 0) / 60)
    );
    return Notification.warning(
      `${instance.name} (${instance.id}) has been idle and stops itself in about ` +
        `${minutes} min.`,
      {
        autoClose: false,
        actions: [
          {
            label: 'Keep running 1 h',
            displayType: 'accent',
            callback: () => void this._keepAlive(instance)
          }
        ]
      }
    );
  }

  private async _keepAlive(instance: IInstance): Promise<void> {
    try {
      await requestAPI<IInstance>(
        `instances/${encodeURIComponent(instance.id)}/keepalive`,
        {
          method: 'POST',
          body: JSON.stringify({ minutes: KEEPALIVE_MINUTES })
        },
        this._model.serverSettings
      );
      this._shown.delete(instance.id);
      Notification.success(`${instance.name} keeps running for another hour.`, {
        autoClose: 5000
      });
      await this._model.refresh();
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      Notification.error(
        `Could not keep ${instance.name} running: ${message}`,
        {
          autoClose: false
        }
      );
    }
  }

  private readonly _model: EC2Model;
  private readonly _shown = new Map<string, string>();
  private _isDisposed = false;
}
