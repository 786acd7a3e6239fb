/**
 * Constants, command ids and the TypeScript mirrors of the REST payloads.
 *
 * This module has no side effects: anything may import it, tests included.
 */

/** The id of the main plugin, also the name of its settings schema file. */
export const PLUGIN_ID = 'jupyter-ec2:plugin';

/** The REST namespace under the server's base URL. */
export const API_NAMESPACE = 'jupyter-ec2/api';

/** The launcher and command palette category. */
export const CATEGORY = 'EC2';

/** The DOM id of the instances panel (one per JupyterLab window). */
export const PANEL_ID = 'jupyter-ec2-panel';

/** The namespace of the panel's widget tracker (and layout restorer). */
export const TRACKER_NAMESPACE = 'jupyter-ec2';

/** The command the extension offers to hint at when the server part is missing. */
export const ENABLE_HINT = 'jupyter server extension enable jupyter_ec2';

/** Default seconds between two refreshes of the model. */
export const DEFAULT_REFRESH_SECONDS = 30;

/** Command ids. */
export namespace CommandIDs {
  /** Open (or reveal) the instances panel; optional arg `profile` selects a profile. */
  export const openPanel = 'jupyter-ec2:open-panel';
  /** Launch from a profile (arg `profile`); for now it opens the panel with it selected. */
  export const launchProfile = 'jupyter-ec2:launch-profile';
  /** Reload profiles (and, later, instances) from the server. */
  export const refresh = 'jupyter-ec2:refresh';
}

/** The environment set up on an instance (`Provisioner.environment`). */
export type Environment =
  | { kind: 'pip'; packages?: string[] }
  | { kind: 'conda'; packages?: string[]; installer_url?: string }
  | { kind: 'existing'; python: string };

/** A launch profile, as `GET profiles` returns it. */
export interface IProfile {
  name: string;
  display_name: string;
  region: string;
  instance_type: string;
  ami: string;
  volume_gb: number;
  spot: boolean;
  environment: Environment;
  idle_stop_minutes: number;
  tags: Record<string, string>;
}

/** The answer of `GET profiles`. */
export interface IProfilesReply {
  default: string | null;
  profiles: IProfile[];
}

/** An instance's lifecycle phase (the `phase` field). */
export type Phase =
  | 'launching'
  | 'booting'
  | 'connecting'
  | 'provisioning'
  | 'starting'
  | 'ready'
  | 'degraded'
  | 'stopping'
  | 'stopped'
  | 'terminating'
  | 'terminated'
  | 'failed';

/** The state of the port forward to an instance. */
export interface ITunnel {
  state: 'up' | 'reconnecting' | 'down';
  local_port: number | null;
}

/** Where and why an instance failed. */
export interface IInstanceError {
  step: string;
  message: string;
}

/** An instance this extension manages. */
export interface IInstance {
  id: string;
  name: string;
  profile: string;
  region: string;
  instance_type: string;
  ec2_state: string;
  phase: Phase;
  progress: number;
  message: string;
  error: IInstanceError | null;
  tunnel: ITunnel | null;
  url: string | null;
  launched_at: string;
  updated_at: string;
  hourly_usd: number | null;
}

/** The answer of `GET instances`. */
export interface IInstancesReply {
  instances: IInstance[];
}

/** The body of `POST instances`. */
export interface ILaunchRequest {
  profile: string;
  name?: string;
  overrides?: Partial<Omit<IProfile, 'name'>>;
}

/** One line of `GET instances/{id}/log`. */
export interface ILogLine {
  seq: number;
  time: string;
  step: string;
  text: string;
}

/** The answer of `GET instances/{id}/log?after=N`. */
export interface ILogReply {
  lines: ILogLine[];
  next: number;
}

/** The JSON body of an error answer. */
export interface IErrorReply {
  message: string;
  field?: string;
  code?: string;
}
