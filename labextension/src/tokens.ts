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

/** Default of the `autoOpen` setting: open a launched instance's notebook when ready. */
export const DEFAULT_AUTO_OPEN = false;

/** Seconds between two refreshes while an instance is changing phase. */
export const FAST_REFRESH_SECONDS = 2;

/** Seconds between two reads of a shown log while its instance changes phase (slower otherwise). */
export const LOG_REFRESH_SECONDS = 1.5;

/** The most log lines a panel keeps per instance (the oldest are dropped). */
export const MAX_LOG_LINES = 2000;

/** Where this browser tab remembers the instances it waits for (survives a reload). */
export const WATCH_STORAGE_KEY = 'jupyter-ec2:watching';

/** Command ids. */
export namespace CommandIDs {
  /** Open (or reveal) the instances panel; optional arg `profile` selects a profile. */
  export const openPanel = 'jupyter-ec2:open-panel';
  /** Launch an instance of a profile at once (arg `profile`; optional `name`, `overrides`). */
  export const launchProfile = 'jupyter-ec2:launch-profile';
  /** Reload profiles and instances from the server. */
  export const refresh = 'jupyter-ec2:refresh';
  /** Open a ready instance's notebook in a new browser tab (arg `id`, else ask). */
  export const openInstance = 'jupyter-ec2:open-instance';
  /** Stop an instance; its disk is kept (arg `id`, else ask). */
  export const stopInstance = 'jupyter-ec2:stop-instance';
  /** Start a stopped instance (arg `id`, else ask). */
  export const startInstance = 'jupyter-ec2:start-instance';
  /** Re-establish the forward to an instance (arg `id`, else ask). */
  export const reconnectInstance = 'jupyter-ec2:reconnect-instance';
  /** Terminate an instance after a confirmation; its disk is lost (arg `id`, else ask). */
  export const terminateInstance = 'jupyter-ec2:terminate-instance';
  /** Show or hide the live log of an instance in the panel (arg `id`, else ask). */
  export const toggleLog = 'jupyter-ec2:toggle-log';
  /** Change an instance's type on the same disk, in a dialog (arg `id`, else ask). */
  export const resizeInstance = 'jupyter-ec2:resize-instance';
  /** Save an instance's disk as an image, asking the name and, if it runs, the reboot choice. */
  export const saveImage = 'jupyter-ec2:save-image';
  /** Launch an instance from a saved image (arg `image`; optional `profile`). */
  export const launchFromImage = 'jupyter-ec2:launch-from-image';
  /** Delete a saved image and its snapshots after a confirmation (arg `image`, else ask). */
  export const deleteImage = 'jupyter-ec2:delete-image';
  /** Reload the saved images from the server. */
  export const refreshImages = 'jupyter-ec2:refresh-images';
}

/** What a user can do to an instance; also the buttons' `data-action`. */
export type InstanceAction =
  | 'open'
  | 'stop'
  | 'start'
  | 'reconnect'
  | 'resize'
  | 'image'
  | 'terminate'
  | 'log';

/**
 * The actions the server may publish in `Instance.actions` (DESIGN.md §4). The panel shows a
 * button only for those it knows ({@link InstanceAction}); the server decides which apply.
 */
export type ServerAction =
  | 'open'
  | 'start'
  | 'reconnect'
  | 'stop'
  | 'resize'
  | 'keepalive'
  | 'image'
  | 'workers'
  | 'terminate';

/** The idle auto-stop countdown of a ready instance (`Instance.idle`). */
export interface IIdle {
  stops_at: string | null;
  seconds_left: number | null;
  busy: boolean;
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

/** An instance's lifecycle phase (the `phase` field, DESIGN.md §2). */
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
  | 'failed'
  | 'resizing';

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
  /** The actions allowed now, decided by the server. */
  actions: ServerAction[];
  /** Whether a phase is in progress (the panel polls faster while any is). */
  pending: boolean;
  /** The idle auto-stop countdown, or null when auto-stop is not armed. */
  idle: IIdle | null;
  /** What it has cost so far and costs a month while stopped (an estimate; null if unknown). */
  cost?: ICost;
  /** Its Dask workers (`[]` when none). */
  workers?: IWorker[];
  /** Its Dask scheduler and dashboard, or null when it has no workers. */
  dask?: IDask | null;
  /** When a stopped instance is snapshotted then terminated (terminate_stopped_after_days). */
  terminates_at?: string | null;
  /** The snapshot-then-terminate under way or failed, or null. */
  termination?: ITermination | null;
}

/** A Dask worker instance of a notebook instance (`Instance.workers`). */
export interface IWorker {
  id: string;
  phase: string;
  instance_type: string;
  /** Why it failed, when its phase is `failed`. */
  error?: string;
}

/** `Instance.dask`: the scheduler's address and the dashboard's path under the proxy. */
export interface IDask {
  scheduler: string;
  dashboard_url: string;
}

/** `Instance.termination`: a forgotten stopped instance being snapshotted, or why it failed. */
export interface ITermination {
  state: 'snapshotting' | 'failed';
  snapshots: string[];
  error: string | null;
}

/** `Instance.cost`: an estimate in USD, null where a price is unknown. */
export interface ICost {
  so_far_usd: number | null;
  stopped_monthly_usd: number | null;
}

/** The answer of `GET instances`. */
export interface IInstancesReply {
  instances: IInstance[];
}

/** The profile fields a launch may override (`POST instances` → `overrides`). */
export interface IOverrides {
  instance_type?: string;
  volume_gb?: number;
  spot?: boolean;
  idle_stop_minutes?: number;
  ami?: string;
  region?: string;
}

/** The names of the fields of {@link IOverrides}. */
export type OverrideField = keyof IOverrides;

/** The body of `POST instances`. */
export interface ILaunchRequest {
  profile: string;
  name?: string;
  overrides?: IOverrides;
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

/** One type of `GET instances/{id}/resize-options` (facts may be missing for unknown ones). */
export interface IResizeOption {
  instance_type: string;
  vcpus?: number | null;
  memory_gib?: number | null;
  architecture?: string;
  gpus?: string[];
  hourly_usd: number | null;
  compatible: boolean;
  /** Why not, for programs: `architecture`, `ena_nvme`, `not_offered`, `spot`, … */
  reason: string | null;
  /** Why not, for people. */
  message: string | null;
}

/** The answer of `GET instances/{id}/resize-options`. */
export interface IResizeOptions {
  instance_id: string;
  current: { instance_type: string; hourly_usd: number | null };
  availability_zone: string | null;
  architecture: string | null;
  types: IResizeOption[];
}

/** A saved image (`GET images`, DESIGN.md §4 `Image`). */
export interface IImage {
  id: string;
  name: string;
  state: 'pending' | 'available' | 'failed';
  source_instance: string | null;
  created_at: string;
  size_gb: number | null;
  monthly_usd: number | null;
  region?: string;
  environment?: string | null;
}

/** The answer of `GET images`. */
export interface IImagesReply {
  images: IImage[];
}

/** The body of `POST instances/{id}/image`. */
export interface IImageRequest {
  name?: string;
  reboot?: boolean;
}
