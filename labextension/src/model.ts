/**
 * The state of the extension in this window: launch profiles (and, later, instances).
 *
 * Views never fetch: they render the model and re-render on its `changed` signal.
 */
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { IPoll, Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { APIError, requestAPI } from './request';
import { DEFAULT_REFRESH_SECONDS, IProfile, IProfilesReply } from './tokens';

/** Where the model is in loading its data. */
export type LoadStatus = 'loading' | 'ready' | 'error';

/** The model's last failure, in words a user can act on. */
export interface IModelError {
  message: string;
  /** True when the jupyter_ec2 server extension is not enabled. */
  serverExtensionMissing: boolean;
}

/** Profiles (later instances) of the jupyter_ec2 server, refreshed by a poll. */
export class EC2Model implements IDisposable {
  constructor(options: EC2Model.IOptions = {}) {
    this._serverSettings =
      options.serverSettings ?? ServerConnection.makeSettings();
    this._ready = new Promise<void>(resolve => {
      this._resolveReady = resolve;
    });
    this._poll = new Poll({
      auto: false,
      factory: () => this._load(),
      frequency: EC2Model.frequency(
        options.refreshSeconds ?? DEFAULT_REFRESH_SECONDS
      ),
      name: 'jupyter-ec2:model',
      standby: 'when-hidden'
    });
    void this._poll.start();
  }

  /** Emitted whenever anything a view shows has changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Resolves once the first load has finished, whether it succeeded or not. */
  get ready(): Promise<void> {
    return this._ready;
  }

  /** Where the model is in loading its data. */
  get status(): LoadStatus {
    return this._status;
  }

  /** The last failure, `null` once a load succeeds. */
  get error(): IModelError | null {
    return this._error;
  }

  /** The launch profiles, in the server's order. */
  get profiles(): ReadonlyArray<IProfile> {
    return this._profiles;
  }

  /** The name of the server's default profile. */
  get defaultProfile(): string | null {
    return this._defaultProfile;
  }

  /** The name of the profile selected in the panel. */
  get selected(): string | null {
    return this._selected;
  }

  /** The profile called `name`, if the server has one. */
  profile(name: string | null | undefined): IProfile | undefined {
    return this._profiles.find(profile => profile.name === name);
  }

  /** Select a profile by name; an unknown name is kept until profiles load. */
  select(name: string | null): void {
    if (name === this._selected) {
      return;
    }
    this._selected = name;
    this._changed.emit();
  }

  /** Seconds between two refreshes. */
  set refreshSeconds(seconds: number) {
    this._poll.frequency = EC2Model.frequency(seconds);
  }

  /** Reload everything now; resolves when that load has finished. */
  async refresh(): Promise<void> {
    await this._poll.refresh();
    await this._poll.tick;
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    Signal.clearData(this);
  }

  /** One poll tick: fetch the profiles and publish them. */
  private async _load(): Promise<void> {
    try {
      const reply = await requestAPI<IProfilesReply>(
        'profiles',
        { method: 'GET' },
        this._serverSettings
      );
      this._setProfiles(reply);
    } catch (error) {
      this._setError(error);
      // Rethrown so that the poll backs off.
      throw error;
    } finally {
      this._resolveReady();
    }
  }

  private _setProfiles(reply: IProfilesReply): void {
    const profiles = Array.isArray(reply.profiles) ? reply.profiles : [];
    const defaultProfile = reply.default ?? profiles[0]?.name ?? null;
    let selected = this._selected;
    if (!profiles.some(profile => profile.name === selected)) {
      selected = defaultProfile;
    }
    const unchanged =
      this._status === 'ready' &&
      this._error === null &&
      this._defaultProfile === defaultProfile &&
      this._selected === selected &&
      JSON.stringify(this._profiles) === JSON.stringify(profiles);
    if (unchanged) {
      return;
    }
    this._profiles = profiles;
    this._defaultProfile = defaultProfile;
    this._selected = selected;
    this._status = 'ready';
    this._error = null;
    this._changed.emit();
  }

  private _setError(error: unknown): void {
    const next: IModelError = {
      message: error instanceof Error ? error.message : String(error),
      serverExtensionMissing:
        error instanceof APIError && error.serverExtensionMissing
    };
    if (
      this._error?.message === next.message &&
      this._error.serverExtensionMissing === next.serverExtensionMissing
    ) {
      return;
    }
    this._error = next;
    // Profiles already shown stay usable; only a first failure is an error state.
    if (this._status === 'loading') {
      this._status = 'error';
    }
    this._changed.emit();
  }

  private readonly _serverSettings: ServerConnection.ISettings;
  private readonly _poll: Poll;
  private readonly _changed = new Signal<this, void>(this);
  private readonly _ready: Promise<void>;
  private _resolveReady: () => void = () => undefined;
  private _status: LoadStatus = 'loading';
  private _error: IModelError | null = null;
  private _profiles: IProfile[] = [];
  private _defaultProfile: string | null = null;
  private _selected: string | null = null;
}

/** Companion of {@link EC2Model}. */
export namespace EC2Model {
  /** Options of a new model. */
  export interface IOptions {
    /** The server to talk to; the default settings otherwise. */
    serverSettings?: ServerConnection.ISettings;
    /** Seconds between two refreshes. */
    refreshSeconds?: number;
  }

  /** The poll frequency for a refresh every `seconds`, backing off on errors. */
  export function frequency(seconds: number): IPoll.Frequency {
    const interval = Math.max(1, seconds) * 1000;
    return { interval, backoff: true, max: Math.max(interval, 300 * 1000) };
  }
}
