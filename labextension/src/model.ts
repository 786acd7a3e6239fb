/**
 * The state of the extension in this window: launch profiles, instances and their logs.
 *
 * Views never fetch: they render the model and re-render on its `changed` signal. One poll
 * reads the instances (and, now and then, the profiles): every 2 s while an instance changes
 * phase, every `refreshSeconds` otherwise, backing off on errors and standing by while the
 * page is hidden.
 */
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { IPoll, Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { isBringingUp, isCredentialsProblem, parseTime } from './instances';
import { LogTail } from './logtail';
import { APIError, requestAPI } from './request';
import {
  DEFAULT_REFRESH_SECONDS,
  FAST_REFRESH_SECONDS,
  IInstance,
  IInstancesReply,
  ILaunchRequest,
  IProfile,
  IProfilesReply
} from './tokens';

/** Where the model is in loading its data. */
export type LoadStatus = 'loading' | 'ready' | 'error';

/** The model's last failure, in words a user can act on. */
export interface IModelError {
  message: string;
  /** True when the jupyter_ec2 server extension is not enabled. */
  serverExtensionMissing: boolean;
}

/** One instance appeared, changed or disappeared. */
export interface IInstanceChange {
  id: string;
  /** How it was before, `null` when this window had not seen it. */
  previous: IInstance | null;
  /** How it is now, `null` when the server no longer lists it. */
  current: IInstance | null;
}

/** The actions that answer `202` + Instance on `POST instances/{id}/{action}`. */
export type PostAction = 'start' | 'stop' | 'reconnect';

/** Seconds after which the profiles are read again with the instances. */
const PROFILES_MAX_AGE_SECONDS = 60;

/** Where this tab keeps when each instance's current change began (survives a reload). */
const SINCE_STORAGE_KEY = 'jupyter-ec2:since';

/** Profiles and instances of the jupyter_ec2 server, refreshed by a poll. */
export class EC2Model implements IDisposable {
  constructor(options: EC2Model.IOptions = {}) {
    this._serverSettings =
      options.serverSettings ?? ServerConnection.makeSettings();
    this._refreshSeconds = options.refreshSeconds ?? DEFAULT_REFRESH_SECONDS;
    this._since = loadSince();
    this._ready = new Promise<void>(resolve => {
      this._resolveReady = resolve;
    });
    this._poll = new Poll({
      auto: false,
      factory: () => this._load(),
      frequency: EC2Model.frequency(this._refreshSeconds),
      name: 'jupyter-ec2:model',
      standby: 'when-hidden'
    });
    void this._poll.start();
  }

  /** Emitted whenever anything a view shows has changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted for each instance that appeared, changed or disappeared. */
  get instanceChanged(): ISignal<this, IInstanceChange> {
    return this._instanceChanged;
  }

  /** Resolves once the first load has finished, whether it succeeded or not. */
  get ready(): Promise<void> {
    return this._ready;
  }

  /** Where the model is in loading its data. */
  get status(): LoadStatus {
    return this._status;
  }

  /** The last failure to load, `null` once a load succeeds. */
  get error(): IModelError | null {
    return this._error;
  }

  /**
   * What the server said when AWS refused to work for lack of credentials, or `null`.
   *
   * Set by a launch or an action that failed so, cleared by the next one that succeeds.
   */
  get credentialsProblem(): string | null {
    return this._credentialsProblem;
  }

  /** The server connection settings the model talks to. */
  get serverSettings(): ServerConnection.ISettings {
    return this._serverSettings;
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

  /** Every managed instance, newest first (as the server lists them). */
  get instances(): ReadonlyArray<IInstance> {
    return this._instances;
  }

  /** The profile called `name`, if the server has one. */
  profile(name: string | null | undefined): IProfile | undefined {
    return this._profiles.find(profile => profile.name === name);
  }

  /** The instance `id`, if the server lists it. */
  instance(id: string | null | undefined): IInstance | undefined {
    return this._instances.find(instance => instance.id === id);
  }

  /** When the instance's current change of phase began (ms since the epoch), if it is changing. */
  since(id: string): number | null {
    return this._since[id] ?? null;
  }

  /** Select a profile by name; an unknown name is kept until profiles load. */
  select(name: string | null): void {
    if (name === this._selected) {
      return;
    }
    this._selected = name;
    this._changed.emit();
  }

  /** Seconds between two refreshes while no instance is changing phase. */
  get refreshSeconds(): number {
    return this._refreshSeconds;
  }
  set refreshSeconds(seconds: number) {
    this._refreshSeconds = seconds;
    this._applyFrequency();
  }

  /** Reload profiles and instances now; resolves when that load has finished. */
  async refresh(): Promise<void> {
    this._profilesLoadedAt = 0;
    await this._poll.refresh();
    await this._poll.tick;
  }

  /**
   * Launch an instance: `POST instances`.
   *
   * @returns the new instance (phase `launching`)
   * @throws APIError, e.g. a 400 whose `field` names the refused input
   */
  async launch(request: ILaunchRequest): Promise<IInstance> {
    const instance = await this._call<IInstance>('instances', {
      method: 'POST',
      body: JSON.stringify(request)
    });
    this._upsert(instance);
    return instance;
  }

  /** Start, stop or reconnect an instance: `POST instances/{id}/{action}`. */
  async act(id: string, action: PostAction): Promise<IInstance> {
    const instance = await this._call<IInstance>(
      `instances/${encodeURIComponent(id)}/${action}`,
      { method: 'POST' }
    );
    this._upsert(instance);
    return instance;
  }

  /** Terminate an instance, losing its disk: `DELETE instances/{id}`. */
  async terminate(id: string): Promise<IInstance> {
    const instance = await this._call<IInstance>(
      `instances/${encodeURIComponent(id)}`,
      { method: 'DELETE' }
    );
    this._upsert(instance);
    return instance;
  }

  /** Add Dask workers next to a ready instance: `POST instances/{id}/workers`. */
  async addWorkers(
    id: string,
    count: number,
    instanceType?: string
  ): Promise<IInstance> {
    const body: { count: number; instance_type?: string } = { count };
    if (instanceType) {
      body.instance_type = instanceType;
    }
    const instance = await this._call<IInstance>(
      `instances/${encodeURIComponent(id)}/workers`,
      { method: 'POST', body: JSON.stringify(body) }
    );
    this._upsert(instance);
    return instance;
  }

  /** Terminate every Dask worker of an instance: `DELETE instances/{id}/workers`. */
  async removeWorkers(id: string): Promise<IInstance> {
    const instance = await this._call<IInstance>(
      `instances/${encodeURIComponent(id)}/workers`,
      { method: 'DELETE' }
    );
    this._upsert(instance);
    return instance;
  }

  /** The live log of an instance, if it is shown. */
  log(id: string): LogTail | undefined {
    return this._logs.get(id);
  }

  /** Show (start tailing) or hide the log of an instance; returns whether it is shown now. */
  toggleLog(id: string, show?: boolean): boolean {
    const tail = this._logs.get(id);
    const wanted = show ?? tail === undefined;
    if (wanted && tail === undefined) {
      const created = new LogTail({
        instanceId: id,
        serverSettings: this._serverSettings
      });
      const instance = this.instance(id);
      created.fast = instance !== undefined && instance.pending;
      created.changed.connect(this._emitChanged, this);
      this._logs.set(id, created);
      this._changed.emit();
    } else if (!wanted && tail !== undefined) {
      this._logs.delete(id);
      tail.dispose();
      this._changed.emit();
    }
    return wanted;
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    this._logs.forEach(tail => tail.dispose());
    this._logs.clear();
    Signal.clearData(this);
  }

  /** One poll tick: fetch the instances (and the profiles when due) and publish them. */
  private async _load(): Promise<void> {
    try {
      const profilesDue =
        Date.now() - this._profilesLoadedAt >=
        Math.max(this._refreshSeconds, PROFILES_MAX_AGE_SECONDS) * 1000;
      const [profiles, instances] = await Promise.all([
        profilesDue
          ? requestAPI<IProfilesReply>(
              'profiles',
              { method: 'GET' },
              this._serverSettings
            )
          : Promise.resolve(null),
        requestAPI<IInstancesReply>(
          'instances',
          { method: 'GET' },
          this._serverSettings
        )
      ]);
      if (profiles !== null) {
        this._profilesLoadedAt = Date.now();
      }
      this._publish(profiles, instances);
    } catch (error) {
      this._setError(error);
      // Rethrown so that the poll backs off.
      throw error;
    } finally {
      this._resolveReady();
    }
  }

  private _publish(
    profilesReply: IProfilesReply | null,
    instancesReply: IInstancesReply
  ): void {
    let changed = this._status !== 'ready' || this._error !== null;
    if (profilesReply !== null) {
      changed = this._setProfiles(profilesReply) || changed;
    }
    const instances = Array.isArray(instancesReply.instances)
      ? instancesReply.instances
      : [];
    const changes = this._setInstances(instances);
    changed = changed || changes.length > 0;
    this._status = 'ready';
    this._error = null;
    this._applyFrequency();
    if (changed) {
      this._changed.emit();
    }
    changes.forEach(change => this._instanceChanged.emit(change));
  }

  /** Take the profiles in; returns whether anything changed. */
  private _setProfiles(reply: IProfilesReply): boolean {
    const profiles = Array.isArray(reply.profiles) ? reply.profiles : [];
    const defaultProfile = reply.default ?? profiles[0]?.name ?? null;
    let selected = this._selected;
    if (!profiles.some(profile => profile.name === selected)) {
      selected = defaultProfile;
    }
    const unchanged =
      this._defaultProfile === defaultProfile &&
      this._selected === selected &&
      JSON.stringify(this._profiles) === JSON.stringify(profiles);
    if (unchanged) {
      return false;
    }
    this._profiles = profiles;
    this._defaultProfile = defaultProfile;
    this._selected = selected;
    return true;
  }

  /** Take the whole list of instances in; returns what changed. */
  private _setInstances(instances: IInstance[]): IInstanceChange[] {
    const before = new Map(this._instances.map(item => [item.id, item]));
    const changes: IInstanceChange[] = [];
    for (const current of instances) {
      const previous = before.get(current.id) ?? null;
      before.delete(current.id);
      if (previous === null || !sameInstance(previous, current)) {
        changes.push({ id: current.id, previous, current });
      }
    }
    before.forEach(previous => {
      changes.push({ id: previous.id, previous, current: null });
    });
    this._instances = instances;
    this._afterChanges(changes);
    return changes;
  }

  /** Put one instance the server just answered into the list, newest first. */
  private _upsert(instance: IInstance): void {
    const index = this._instances.findIndex(item => item.id === instance.id);
    const previous = index >= 0 ? this._instances[index] : null;
    if (previous !== null && sameInstance(previous, instance)) {
      return;
    }
    const instances = this._instances.slice();
    if (index >= 0) {
      instances[index] = instance;
    } else {
      instances.unshift(instance);
    }
    this._instances = instances;
    const change = { id: instance.id, previous, current: instance };
    this._afterChanges([change]);
    this._applyFrequency();
    this._changed.emit();
    this._instanceChanged.emit(change);
    if (instance.pending) {
      // Follow the change at the fast pace from now on, not after the slow interval.
      void this._poll.refresh();
    }
  }

  /** Keep the elapsed-time origins and the log tails in step with the changes. */
  private _afterChanges(changes: IInstanceChange[]): void {
    const now = Date.now();
    for (const { id, previous, current } of changes) {
      if (current === null) {
        delete this._since[id];
        const tail = this._logs.get(id);
        if (tail !== undefined) {
          this._logs.delete(id);
          tail.dispose();
        }
        continue;
      }
      const tail = this._logs.get(id);
      if (tail !== undefined) {
        tail.fast = current.pending;
        if (previous !== null && previous.phase !== current.phase) {
          void tail.refresh();
        }
      }
      if (!current.pending) {
        delete this._since[id];
      } else if (previous !== null && !previous.pending) {
        this._since[id] = now;
      } else if (this._since[id] === undefined) {
        this._since[id] = firstSeenSince(current, now);
      }
    }
    saveSince(this._since);
  }

  private _applyFrequency(): void {
    const busy = this._instances.some(item => item.pending);
    this._poll.frequency = EC2Model.frequency(
      busy
        ? Math.min(FAST_REFRESH_SECONDS, this._refreshSeconds)
        : this._refreshSeconds
    );
  }

  /** A REST call of an action, remembering whether it failed for lack of AWS credentials. */
  private async _call<T>(endpoint: string, init: RequestInit): Promise<T> {
    try {
      const result = await requestAPI<T>(endpoint, init, this._serverSettings);
      this._setCredentialsProblem(null);
      return result;
    } catch (error) {
      if (
        error instanceof APIError &&
        error.status >= 500 &&
        isCredentialsProblem(error.message, error.code)
      ) {
        this._setCredentialsProblem(error.message);
      }
      throw error;
    }
  }

  private _setCredentialsProblem(message: string | null): void {
    if (message === this._credentialsProblem) {
      return;
    }
    this._credentialsProblem = message;
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
    // What is already shown stays usable; only a first failure is an error state.
    if (this._status === 'loading') {
      this._status = 'error';
    }
    this._changed.emit();
  }

  private _emitChanged(): void {
    this._changed.emit();
  }

  private readonly _serverSettings: ServerConnection.ISettings;
  private readonly _poll: Poll;
  private readonly _changed = new Signal<this, void>(this);
  private readonly _instanceChanged = new Signal<this, IInstanceChange>(this);
  private readonly _ready: Promise<void>;
  private readonly _logs = new Map<string, LogTail>();
  private readonly _since: Record<string, number>;
  private _resolveReady: () => void = () => undefined;
  private _refreshSeconds: number;
  private _profilesLoadedAt = 0;
  private _status: LoadStatus = 'loading';
  private _error: IModelError | null = null;
  private _credentialsProblem: string | null = null;
  private _profiles: IProfile[] = [];
  private _defaultProfile: string | null = null;
  private _selected: string | null = null;
  private _instances: IInstance[] = [];
}

/** Companion of {@link EC2Model}. */
export namespace EC2Model {
  /** Options of a new model. */
  export interface IOptions {
    /** The server to talk to; the default settings otherwise. */
    serverSettings?: ServerConnection.ISettings;
    /** Seconds between two refreshes while no instance changes phase. */
    refreshSeconds?: number;
  }

  /** The poll frequency for a refresh every `seconds`, backing off on errors. */
  export function frequency(seconds: number): IPoll.Frequency {
    const interval = Math.max(1, seconds) * 1000;
    return { interval, backoff: true, max: Math.max(interval, 300 * 1000) };
  }
}

/** Whether two answers for the same instance show the same thing. */
function sameInstance(a: IInstance, b: IInstance): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** When a change this window first sees already under way began, as well as it can tell. */
function firstSeenSince(instance: IInstance, now: number): number {
  const launched = parseTime(instance.launched_at);
  const updated = parseTime(instance.updated_at);
  // A launch under way began at launched_at; a later start or stop began when it last moved.
  if (
    isBringingUp(instance.phase) &&
    launched !== null &&
    now - launched < 3600 * 1000
  ) {
    return Math.min(launched, now);
  }
  return updated !== null ? Math.min(updated, now) : now;
}

function loadSince(): Record<string, number> {
  try {
    const raw = window.sessionStorage.getItem(SINCE_STORAGE_KEY);
    const parsed: unknown = raw ? JSON.parse(raw) : {};
    const result: Record<string, number> = {};
    if (typeof parsed === 'object' && parsed !== null) {
      Object.entries(parsed).forEach(([key, value]) => {
        if (typeof value === 'number') {
          result[key] = value;
        }
      });
    }
    return result;
  } catch {
    return {};
  }
}

function saveSince(since: Record<string, number>): void {
  try {
    window.sessionStorage.setItem(SINCE_STORAGE_KEY, JSON.stringify(since));
  } catch {
    // Storage may be full or off: the elapsed time then restarts on a reload, nothing worse.
  }
}
