/**
 * "Check setup": the server's preflight checks (`GET preflight`) in a small model, and the
 * palette command that runs them again.
 *
 * The server decides everything (which checks failed, which profiles a launch would fail
 * for and why); this module only fetches, keeps and announces the answer.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from './request';
import { CATEGORY, CommandIDs } from './tokens';

/** The command that runs the checks again and shows the panel. */
export const CHECK_SETUP_COMMAND = 'jupyter-ec2:check-setup';

/** How a check ended: passed, failed, or not made because an earlier one failed. */
export type CheckStatus = 'ok' | 'fail' | 'skip';

/** One profile's outcome in a check that looks at each profile. */
export interface IProfileVerdict {
  ok: boolean;
  message: string;
}

/** One check of `GET preflight`. */
export interface IPreflightCheck {
  name: string;
  ok: boolean;
  status?: CheckStatus;
  message: string;
  fix: string | null;
  profiles?: Record<string, IProfileVerdict>;
  details?: string[];
}

/** Why launching a profile would fail: the check and its words. */
export interface IBlockedProfile {
  check: string;
  message: string;
}

/** The answer of `GET preflight`. */
export interface IPreflightReply {
  ok: boolean;
  checks: IPreflightCheck[];
  checked_at?: string;
  blocked_profiles?: Record<string, IBlockedProfile>;
}

/** A check's status, for servers that send only `ok`. */
export function statusOf(check: IPreflightCheck): CheckStatus {
  return check.status ?? (check.ok ? 'ok' : 'fail');
}

/** The last preflight answer of the server, refreshed on demand. */
export class PreflightModel implements IDisposable {
  constructor(options: PreflightModel.IOptions = {}) {
    this._serverSettings =
      options.serverSettings ?? ServerConnection.makeSettings();
  }

  /** Emitted when the answer, the error or `running` changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The last answer, `null` before the first one. */
  get reply(): IPreflightReply | null {
    return this._reply;
  }

  /** Why the last check could not be fetched, or `null`. */
  get error(): string | null {
    return this._error;
  }

  /** True while the checks run. */
  get running(): boolean {
    return this._running !== null;
  }

  /** The checks that failed (not those skipped because of them). */
  get failing(): IPreflightCheck[] {
    return (this._reply?.checks ?? []).filter(
      check => statusOf(check) === 'fail'
    );
  }

  /** The checks that could not be made because an earlier one failed. */
  get skipped(): IPreflightCheck[] {
    return (this._reply?.checks ?? []).filter(
      check => statusOf(check) === 'skip'
    );
  }

  /** Why a launch of `profile` would fail, if a check says so. */
  blocked(profile: string): IBlockedProfile | null {
    return this._reply?.blocked_profiles?.[profile] ?? null;
  }

  /** Every profile a launch would fail for, with the reason. */
  get blockedProfiles(): Readonly<Record<string, IBlockedProfile>> {
    return this._reply?.blocked_profiles ?? {};
  }

  /**
   * Fetch the checks; with `refresh` the server runs them again instead of using its
   * short-lived copy. Concurrent calls share one request.
   */
  check(refresh = false): Promise<IPreflightReply | null> {
    if (this._running !== null) {
      return this._running;
    }
    this._running = this._fetch(refresh);
    this._changed.emit();
    return this._running;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    Signal.clearData(this);
  }

  private async _fetch(refresh: boolean): Promise<IPreflightReply | null> {
    try {
      const reply = await requestAPI<IPreflightReply>(
        refresh ? 'preflight?refresh=1' : 'preflight',
        { method: 'GET' },
        this._serverSettings
      );
      this._reply = reply;
      this._error = null;
      return reply;
    } catch (error) {
      this._error = error instanceof Error ? error.message : String(error);
      return null;
    } finally {
      this._running = null;
      if (!this._disposed) {
        this._changed.emit();
      }
    }
  }

  private readonly _serverSettings: ServerConnection.ISettings;
  private readonly _changed = new Signal<this, void>(this);
  private _reply: IPreflightReply | null = null;
  private _error: string | null = null;
  private _running: Promise<IPreflightReply | null> | null = null;
  private _disposed = false;
}

/** Companion of {@link PreflightModel}. */
export namespace PreflightModel {
  /** Options of a new model. */
  export interface IOptions {
    serverSettings?: ServerConnection.ISettings;
  }
}

/** The words of a notification about an answer. */
export function summary(reply: IPreflightReply): string {
  const failed = reply.checks.filter(check => statusOf(check) === 'fail');
  if (failed.length === 0) {
    return `AWS setup: all ${reply.checks.length} checks passed.`;
  }
  const names = failed.map(check => check.name).join(', ');
  return `AWS setup: ${failed.length} check(s) failed (${names}). The EC2 panel says what to do.`;
}

/** Add the "Check setup" command (and its palette item). */
export function addPreflightCommand(
  app: JupyterFrontEnd,
  preflight: PreflightModel,
  palette: ICommandPalette | null
): void {
  app.commands.addCommand(CHECK_SETUP_COMMAND, {
    label: 'Check setup',
    caption:
      'Check AWS credentials, permissions, quotas, network, images and the SSH client',
    execute: async () => {
      void app.commands.execute(CommandIDs.openPanel);
      const reply = await preflight.check(true);
      if (reply === null) {
        Notification.error(
          `Could not check the AWS setup: ${preflight.error ?? 'no answer'}`
        );
        return;
      }
      if (reply.ok) {
        Notification.success(summary(reply), { autoClose: 5000 });
      } else {
        Notification.warning(summary(reply), { autoClose: 8000 });
      }
    }
  });
  if (palette) {
    palette.addItem({ command: CHECK_SETUP_COMMAND, category: CATEGORY });
  }
}
