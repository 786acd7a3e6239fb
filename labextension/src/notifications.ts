/**
 * Tells the user, through JupyterLab's notifications, when the model cannot load.
 */
import { Notification } from '@jupyterlab/apputils';
import { IDisposable } from '@lumino/disposable';

import { EC2Model } from './model';

/** Shows one error notification per distinct failure, and dismisses it on recovery. */
export class ErrorNotifier implements IDisposable {
  constructor(model: EC2Model) {
    this._model = model;
    model.changed.connect(this._onChanged, this);
    this._onChanged();
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
    const error = this._model.error;
    const message = error?.message ?? null;
    if (message === this._message) {
      return;
    }
    if (this._notification !== null) {
      Notification.dismiss(this._notification);
      this._notification = null;
    }
    this._message = message;
    if (error !== null) {
      // A missing server extension needs the user to act: keep it until dismissed.
      this._notification = Notification.error(error.message, {
        autoClose: error.serverExtensionMissing ? false : 10000
      });
    }
  }

  private readonly _model: EC2Model;
  private _message: string | null = null;
  private _notification: string | null = null;
  private _isDisposed = false;
}
