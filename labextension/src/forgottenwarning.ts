/**
 * The warning before a forgotten stopped instance is snapshotted and terminated.
 *
 * The date is the server's (`Instance.terminates_at`, from `terminate_stopped_after_days`); the
 * notification shows once per instance when that date is a day or less away, and again if the
 * snapshot fails (`Instance.termination.error`).
 */
import { Notification } from '@jupyterlab/apputils';
import { IDisposable } from '@lumino/disposable';

import { EC2Model } from './model';
import { IInstance } from './tokens';

/** How long before the termination the warning shows. */
export const FORGOTTEN_WARNING_SECONDS = 86400;

/** Seconds until a stopped instance is snapshotted and terminated, or null. */
export function secondsUntilTermination(
  instance: IInstance,
  now: number = Date.now()
): number | null {
  if (!instance.terminates_at || instance.phase !== 'stopped') {
    return null;
  }
  const at = Date.parse(instance.terminates_at);
  return Number.isNaN(at) ? null : (at - now) / 1000;
}

/** Warns once per instance a day before it is snapshotted and terminated. */
export class ForgottenWarning implements IDisposable {
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
  }

  private _onChanged(): void {
    for (const instance of this._model.instances) {
      const left = secondsUntilTermination(instance);
      const error = instance.termination?.error ?? null;
      if (error !== null && !this._failed.has(instance.id)) {
        this._failed.add(instance.id);
        Notification.error(`${instance.name} (${instance.id}): ${error}`, {
          autoClose: false
        });
      }
      if (
        left === null ||
        left > FORGOTTEN_WARNING_SECONDS ||
        this._warned.has(instance.id)
      ) {
        continue;
      }
      this._warned.add(instance.id);
      const when = new Date(instance.terminates_at as string).toLocaleString();
      Notification.warning(
        `${instance.name} (${instance.id}) has been stopped a long time: its disk is ` +
          `snapshotted and the instance terminated on ${when}. Start it to keep it.`,
        { autoClose: false }
      );
    }
  }

  private readonly _model: EC2Model;
  private readonly _warned = new Set<string>();
  private readonly _failed = new Set<string>();
  private _isDisposed = false;
}
