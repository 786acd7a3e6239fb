/**
 * A live tail of one instance's log: `GET instances/{id}/log?after=N`, polled.
 */
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from './request';
import {
  ILogLine,
  ILogReply,
  LOG_REFRESH_SECONDS,
  MAX_LOG_LINES
} from './tokens';

/** The lines of an instance's log read so far; reads on while shown. */
export class LogTail implements IDisposable {
  constructor(options: LogTail.IOptions) {
    this.instanceId = options.instanceId;
    this._serverSettings = options.serverSettings;
    this._poll = new Poll({
      auto: false,
      factory: () => this._read(),
      frequency: LogTail.frequency(true),
      name: `jupyter-ec2:log:${options.instanceId}`,
      standby: 'when-hidden'
    });
    void this._poll.start();
  }

  /** The instance whose log this is. */
  readonly instanceId: string;

  /** Emitted when lines arrive or the error changes. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The lines read so far, oldest first (at most {@link MAX_LOG_LINES}). */
  get lines(): ReadonlyArray<ILogLine> {
    return this._lines;
  }

  /** True until the first read has answered. */
  get loading(): boolean {
    return this._loading;
  }

  /** The last read's failure, `null` once a read succeeds. */
  get error(): string | null {
    return this._error;
  }

  /** Read often while the instance changes phase, seldom otherwise. */
  set fast(fast: boolean) {
    this._poll.frequency = LogTail.frequency(fast);
  }

  /** Read now. */
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

  private async _read(): Promise<void> {
    const after = this._next;
    try {
      const reply = await requestAPI<ILogReply>(
        `instances/${encodeURIComponent(this.instanceId)}/log?after=${after}`,
        { method: 'GET' },
        this._serverSettings
      );
      if (this.isDisposed) {
        return;
      }
      const fresh = (reply.lines ?? []).filter(line => line.seq > after);
      const changed = fresh.length > 0 || this._loading || this._error !== null;
      if (fresh.length > 0) {
        this._lines = this._lines.concat(fresh).slice(-MAX_LOG_LINES);
      }
      if (typeof reply.next === 'number' && reply.next >= after) {
        this._next = reply.next;
      } else if (fresh.length > 0) {
        this._next = fresh[fresh.length - 1].seq;
      }
      this._loading = false;
      this._error = null;
      if (changed) {
        this._changed.emit();
      }
    } catch (error) {
      if (this.isDisposed) {
        return;
      }
      const message = error instanceof Error ? error.message : String(error);
      if (message !== this._error || this._loading) {
        this._error = message;
        this._loading = false;
        this._changed.emit();
      }
      // Rethrown so that the poll backs off.
      throw error;
    }
  }

  private readonly _serverSettings: ServerConnection.ISettings;
  private readonly _poll: Poll;
  private readonly _changed = new Signal<this, void>(this);
  private _lines: ILogLine[] = [];
  private _next = 0;
  private _loading = true;
  private _error: string | null = null;
}

/** Companion of {@link LogTail}. */
export namespace LogTail {
  /** Options of a new tail. */
  export interface IOptions {
    instanceId: string;
    serverSettings: ServerConnection.ISettings;
  }

  /** How often a tail reads: every 1.5 s while the instance changes, every 10 s otherwise. */
  export function frequency(fast: boolean): {
    interval: number;
    backoff: boolean;
    max: number;
  } {
    const interval = (fast ? LOG_REFRESH_SECONDS : 10) * 1000;
    return { interval, backoff: true, max: 60 * 1000 };
  }
}
