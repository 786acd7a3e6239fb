/**
 * Pure functions about instances: what the server allows, and how to say things.
 *
 * The rules (which actions a phase allows, whether it is in progress, the idle countdown) are
 * the server's: they arrive in `actions`, `pending` and `idle`. These functions only read them,
 * so a button, its command and the server never disagree.
 */
import { IInstance, InstanceAction, Phase } from './tokens';

/** The phases in which an instance comes up (launch, start or reconnect). */
const BRING_UP_PHASES: ReadonlySet<Phase> = new Set<Phase>([
  'launching',
  'booting',
  'connecting',
  'provisioning',
  'starting'
]);

/** Whether `phase` is one of the steps of coming up. */
export function isBringingUp(phase: Phase): boolean {
  return BRING_UP_PHASES.has(phase);
}

/** Whether the server allows `action` on `instance` now (the log can always be shown). */
export function offers(instance: IInstance, action: InstanceAction): boolean {
  if (action === 'log') {
    return true;
  }
  if (action === 'open' && !instance.url) {
    return false;
  }
  return (instance.actions ?? []).includes(action);
}

/** The actions the server allows, in the order the panel shows them. */
export function actionsFor(instance: IInstance): InstanceAction[] {
  const order: InstanceAction[] = [
    'open',
    'start',
    'reconnect',
    'stop',
    'resize',
    'image',
    'terminate',
    'log'
  ];
  return order.filter(action => offers(instance, action));
}

/** Button labels of the actions. */
export const ACTION_LABELS: Readonly<Record<InstanceAction, string>> = {
  open: 'Open',
  stop: 'Stop',
  start: 'Start',
  reconnect: 'Reconnect',
  resize: 'Resize',
  image: 'Save as image',
  terminate: 'Terminate',
  log: 'Show log'
};

/** A phase in words for its badge. */
export function phaseLabel(phase: Phase): string {
  return phase.charAt(0).toUpperCase() + phase.slice(1);
}

/** `1 h 02 min`, `3 min 07 s`, `12 s`: a duration in milliseconds, for humans. */
export function formatElapsed(milliseconds: number): string {
  const total = Math.max(0, Math.floor(milliseconds / 1000));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  const pad = (value: number): string => value.toString().padStart(2, '0');
  if (hours > 0) {
    return `${hours} h ${pad(minutes)} min`;
  }
  if (minutes > 0) {
    return `${minutes} min ${pad(seconds)} s`;
  }
  return `${seconds} s`;
}

/** `$0.0416/h`, or `null` when the price is unknown. */
export function formatPrice(hourlyUsd: number | null): string | null {
  if (hourlyUsd === null || !Number.isFinite(hourlyUsd)) {
    return null;
  }
  const digits = hourlyUsd < 1 ? 4 : 2;
  return `$${hourlyUsd.toFixed(digits)}/h`;
}

/** The whole minutes left before the idle auto-stop, or `null` when it is not counting down. */
export function idleStopMinutes(instance: IInstance): number | null {
  const idle = instance.idle;
  if (
    idle === null ||
    idle === undefined ||
    idle.busy ||
    idle.seconds_left === null
  ) {
    return null;
  }
  return Math.max(0, Math.round(idle.seconds_left / 60));
}

/** The port forward's health in words, or `null` when there is no forward. */
export function forwardText(instance: IInstance): string | null {
  const tunnel = instance.tunnel;
  if (tunnel === null) {
    return null;
  }
  const port = tunnel.local_port === null ? '' : ` (port ${tunnel.local_port})`;
  switch (tunnel.state) {
    case 'up':
      return `Forward up${port}`;
    case 'reconnecting':
      return `Forward lost, reconnecting${port}`;
    case 'down':
      return 'Forward down';
  }
}

/**
 * The absolute address of an instance's `url`.
 *
 * In proxy mode the server answers a path (`/jupyter-ec2/remote/i-…/lab`), in direct mode an
 * absolute `http://127.0.0.1:…` URL; a relative path is taken below the server's base URL.
 */
export function absoluteURL(url: string, baseUrl: string): string {
  return new URL(url, baseUrl).href;
}

/** Milliseconds since the epoch of an ISO time, or `null` when it is not one. */
export function parseTime(iso: string | null | undefined): number | null {
  if (!iso) {
    return null;
  }
  const value = Date.parse(iso);
  return Number.isNaN(value) ? null : value;
}

/** Whether an error message is about missing or refused AWS credentials. */
export function isCredentialsProblem(
  message: string,
  code?: string | null
): boolean {
  return code === 'NoCredentials' || /credential/i.test(message);
}
