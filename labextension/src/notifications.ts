/**
 * What the user is told through JupyterLab's notifications: load failures, and how the
 * instances they launched or started come up.
 */
import { Notification } from '@jupyterlab/apputils';
import { IDisposable } from '@lumino/disposable';

import {
  openInNewTab,
  openInstance,
  sameOriginAcknowledged,
  servedOnLocalOrigin
} from './actions';
import { EC2Model, IInstanceChange } from './model';
import { DEFAULT_AUTO_OPEN, IInstance, WATCH_STORAGE_KEY } from './tokens';

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

/** What {@link InstanceNotifier} does when a button of a notification is pressed. */
export interface IInstanceNotifierActions {
  /** Reveal the instances panel. */
  showPanel: () => void;
  /** Reveal the panel with the instance's log shown. */
  showLog: (id: string) => void;
}

/**
 * Follows the instances this browser tab launched or started, and tells the user how they
 * fare: progress while they come up, "ready" with an Open button (or the notebook opened
 * at once with `autoOpen`), or what failed.
 *
 * The followed ids are kept in the tab's session storage, so a reload keeps following.
 */
export class InstanceNotifier implements IDisposable {
  constructor(model: EC2Model, actions: IInstanceNotifierActions) {
    this._model = model;
    this._actions = actions;
    this._watching = loadWatching();
    model.instanceChanged.connect(this._onInstanceChanged, this);
  }

  /** Open a followed instance's notebook by itself once it is ready. */
  autoOpen = DEFAULT_AUTO_OPEN;

  /** Whether `id` is followed. */
  isWatching(id: string): boolean {
    return this._watching.has(id);
  }

  /**
   * Follow an instance until it is ready, failed or gone.
   *
   * @param id - the instance
   * @param label - how to name it in notifications
   */
  watch(id: string, label: string): void {
    this._watching.set(id, label);
    saveWatching(this._watching);
    const instance = this._model.instance(id);
    if (instance !== undefined) {
      this._follow(instance);
    }
  }

  /** Keep an in-progress notification up to date while `id` comes up, then dismiss it. */
  showProgressIn(id: string, notification: string): void {
    const instance = this._model.instance(id);
    if (!this._watching.has(id) || instance === undefined) {
      // Already ready, failed or gone: a later notification says so.
      Notification.dismiss(notification);
      return;
    }
    this._progress.set(id, notification);
    this._follow(instance);
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._model.instanceChanged.disconnect(this._onInstanceChanged, this);
  }

  private _onInstanceChanged(model: EC2Model, change: IInstanceChange): void {
    if (!this._watching.has(change.id)) {
      return;
    }
    if (change.current === null) {
      this._settle(change.id);
      return;
    }
    this._follow(change.current);
  }

  private _follow(instance: IInstance): void {
    const label = this._watching.get(instance.id) ?? instance.name;
    switch (instance.phase) {
      case 'ready':
        this._settle(instance.id);
        this._notifyReady(instance, label);
        return;
      case 'failed':
        this._settle(instance.id);
        Notification.error(
          `${label} failed${instance.error ? ` at ${instance.error.step}: ${instance.error.message}` : `: ${instance.message}`}`,
          {
            autoClose: false,
            actions: [
              {
                label: 'Show log',
                callback: () => this._actions.showLog(instance.id)
              }
            ]
          }
        );
        return;
      case 'stopping':
      case 'stopped':
      case 'terminating':
      case 'terminated':
        // Stopped or terminated before it was ready: nothing more to announce.
        this._settle(instance.id);
        return;
      default: {
        const notification = this._progress.get(instance.id);
        if (notification !== undefined) {
          Notification.update({
            id: notification,
            message: `Launching ${label}… ${instance.message || instance.phase}`,
            type: 'in-progress',
            progress: Math.max(0, Math.min(100, instance.progress)) / 100,
            autoClose: false
          });
        }
      }
    }
  }

  private _notifyReady(instance: IInstance, label: string): void {
    const open: Notification.IAction = {
      label: 'Open',
      caption: 'Open the notebook in a new browser tab',
      displayType: 'accent',
      callback: () => {
        const current = this._model.instance(instance.id) ?? instance;
        void openInstance(current).then(opened => {
          if (!opened && !servedOnLocalOrigin(current)) {
            Notification.warning(
              'The browser did not open a new tab: allow pop-ups for this page.'
            );
          }
        });
      }
    };
    let message = `${label} is ready.`;
    // "same" mode opens only once the user has read what it trusts the instance with.
    if (
      this.autoOpen &&
      (!servedOnLocalOrigin(instance) || sameOriginAcknowledged())
    ) {
      message = openInNewTab(instance)
        ? `${label} is ready and opened in a new tab.`
        : `${label} is ready. The browser blocked the new tab: click Open.`;
    }
    Notification.success(message, {
      autoClose: false,
      actions: [
        open,
        { label: 'Show panel', callback: this._actions.showPanel }
      ]
    });
  }

  /** Stop following `id`; dismiss its progress notification. */
  private _settle(id: string): void {
    const notification = this._progress.get(id);
    if (notification !== undefined) {
      Notification.dismiss(notification);
      this._progress.delete(id);
    }
    if (this._watching.delete(id)) {
      saveWatching(this._watching);
    }
  }

  private readonly _model: EC2Model;
  private readonly _actions: IInstanceNotifierActions;
  private readonly _watching: Map<string, string>;
  private readonly _progress = new Map<string, string>();
  private _isDisposed = false;
}

function loadWatching(): Map<string, string> {
  try {
    const raw = window.sessionStorage.getItem(WATCH_STORAGE_KEY);
    const parsed: unknown = raw ? JSON.parse(raw) : {};
    const result = new Map<string, string>();
    if (typeof parsed === 'object' && parsed !== null) {
      Object.entries(parsed).forEach(([id, label]) => {
        if (typeof label === 'string') {
          result.set(id, label);
        }
      });
    }
    return result;
  } catch {
    return new Map();
  }
}

function saveWatching(watching: Map<string, string>): void {
  try {
    window.sessionStorage.setItem(
      WATCH_STORAGE_KEY,
      JSON.stringify(Object.fromEntries(watching))
    );
  } catch {
    // Without storage a reload forgets what it followed; the panel still shows everything.
  }
}
