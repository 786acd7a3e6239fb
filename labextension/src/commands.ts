/**
 * The extension's commands: the panel, launching, and what can be done to an instance.
 *
 * Instance commands take an `id` argument; without one (from the palette) they ask which
 * instance, among those the action fits.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  InputDialog,
  MainAreaWidget,
  Notification,
  WidgetTracker
} from '@jupyterlab/apputils';
import { refreshIcon } from '@jupyterlab/ui-components';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';

import {
  confirmTerminate,
  errorNotice,
  notifyError,
  openInstance
} from './actions';
import { ec2Icon } from './icons';
import type { ImagesModel } from './images';
import { ACTION_LABELS, offers } from './instances';
import { EC2Model } from './model';
import { InstanceNotifier } from './notifications';
import { createPanel, EC2Panel, PANEL_TITLE } from './panel';
import { PreflightModel } from './preflight';
import { APIError } from './request';
import { resizeWithDialog } from './resize';
import {
  CommandIDs,
  IInstance,
  ILaunchRequest,
  InstanceAction,
  IOverrides
} from './tokens';

/**
 * Wait until a notification shown at `shownAt` has surely become a toast.
 *
 * JupyterLab creates toasts asynchronously and drops an update or a dismissal that comes
 * before the toast exists, so a notification is not changed within its first second.
 */
async function toastSettled(shownAt: number): Promise<void> {
  const wait = shownAt + 1000 - Date.now();
  if (wait > 0) {
    await new Promise<void>(resolve => window.setTimeout(resolve, wait));
  }
}

/** The tracker of the (single) instances panel. */
export type PanelTracker = WidgetTracker<MainAreaWidget<EC2Panel>>;

/** The `profile` argument of a command, if it is a non-empty string. */
export function profileArg(args: ReadonlyPartialJSONObject): string | null {
  const profile = args.profile;
  return typeof profile === 'string' && profile.length > 0 ? profile : null;
}

/** The `id` argument of a command, if it is a non-empty string. */
export function idArg(args: ReadonlyPartialJSONObject): string | null {
  const id = args.id;
  return typeof id === 'string' && id.length > 0 ? id : null;
}

/** The launch request a `launch-profile` command's arguments describe. */
export function launchRequestOf(
  profile: string,
  args: ReadonlyPartialJSONObject
): ILaunchRequest {
  const request: ILaunchRequest = { profile };
  if (typeof args.name === 'string' && args.name.trim() !== '') {
    request.name = args.name.trim();
  }
  const overrides = args.overrides;
  if (
    typeof overrides === 'object' &&
    overrides !== null &&
    !Array.isArray(overrides)
  ) {
    request.overrides = { ...overrides } as IOverrides;
  }
  return request;
}

const PROFILE_ARGS_SCHEMA = {
  args: {
    type: 'object',
    properties: {
      profile: {
        type: 'string',
        description:
          'The name of a launch profile (a key of c.EC2Launcher.profiles)'
      }
    }
  }
};

const LAUNCH_ARGS_SCHEMA = {
  args: {
    type: 'object',
    properties: {
      ...PROFILE_ARGS_SCHEMA.args.properties,
      name: { type: 'string', description: 'A label for the instance' },
      overrides: {
        type: 'object',
        description:
          'Profile fields to change for this launch: instance_type, volume_gb, spot, idle_stop_minutes, ami, region'
      },
      openPanel: {
        type: 'boolean',
        description: 'Reveal the instances panel too (default: true)'
      }
    }
  }
};

const ID_ARGS_SCHEMA = {
  args: {
    type: 'object',
    properties: {
      id: {
        type: 'string',
        description:
          'The EC2 instance id (i-…); without it, the user is asked to pick one'
      }
    }
  }
};

/** What the palette says for an instance command without an `id`. */
const PICK_LABELS: Readonly<Record<InstanceAction, string>> = {
  open: 'Open an EC2 Instance in a New Tab…',
  stop: 'Stop an EC2 Instance…',
  start: 'Start an EC2 Instance…',
  reconnect: 'Reconnect to an EC2 Instance…',
  resize: 'Resize an EC2 Instance…',
  image: 'Save an EC2 Instance as an Image…',
  terminate: 'Terminate an EC2 Instance…',
  log: 'Show the Log of an EC2 Instance…'
};

/** "No instance can be … now." */
const PAST_PARTICIPLES: Readonly<Record<InstanceAction, string>> = {
  open: 'opened',
  stop: 'stopped',
  start: 'started',
  reconnect: 'reconnected',
  resize: 'resized',
  image: 'saved as an image',
  terminate: 'terminated',
  log: 'shown'
};

/** The instance commands and the action each one does. */
const INSTANCE_COMMANDS: ReadonlyArray<[string, InstanceAction, string]> = [
  [
    CommandIDs.openInstance,
    'open',
    "Open the instance's notebook in a new browser tab"
  ],
  [
    CommandIDs.stopInstance,
    'stop',
    'Stop the instance; its disk is kept and it costs only storage'
  ],
  [
    CommandIDs.startInstance,
    'start',
    'Start the stopped instance and its notebook server'
  ],
  [
    CommandIDs.reconnectInstance,
    'reconnect',
    'Re-establish the port forward to the instance'
  ],
  [
    CommandIDs.resizeInstance,
    'resize',
    'Change the instance type (CPU ⇄ GPU) on the same disk, with the new $/h'
  ],
  [
    CommandIDs.terminateInstance,
    'terminate',
    'Terminate the instance; its disk and everything on it is lost'
  ],
  [CommandIDs.toggleLog, 'log', "Show or hide the instance's log in the panel"]
];

/** Register the commands on `app.commands`. */
export function addCommands(
  app: JupyterFrontEnd,
  model: EC2Model,
  tracker: PanelTracker,
  notifier: InstanceNotifier,
  preflight?: PreflightModel,
  images?: ImagesModel
): void {
  const { commands, shell } = app;

  /**
   * Launch, telling the user how it goes.
   *
   * From a tile or the palette a "Launching …" notification shows at once and follows the
   * instance. From the form, whose button shows the wait, it shows once the server accepted
   * the launch, and a refusal (400) is only shown beside the field it names.
   */
  const launch = async (
    request: ILaunchRequest,
    fromForm: boolean
  ): Promise<IInstance> => {
    const label =
      model.profile(request.profile)?.display_name ?? request.profile;
    const launchingText = `Launching ${request.name ?? label}…`;
    const options = {
      autoClose: false as const,
      actions: [
        {
          label: 'Show panel',
          callback: () => void commands.execute(CommandIDs.openPanel)
        }
      ]
    };
    const pending = fromForm
      ? null
      : Notification.emit(launchingText, 'in-progress', options);
    let shownAt = Date.now();
    try {
      const instance = await model.launch(request);
      // Followed from now on, even if the page reloads before the toast below settles.
      notifier.watch(instance.id, instance.name);
      let notification = pending;
      if (notification === null) {
        notification = Notification.emit(launchingText, 'in-progress', options);
        shownAt = Date.now();
      }
      await toastSettled(shownAt);
      notifier.showProgressIn(instance.id, notification);
      return instance;
    } catch (error) {
      if (
        preflight &&
        error instanceof APIError &&
        error.message.includes('Check setup')
      ) {
        // The server named a preflight check: show its banner with the fix.
        void preflight.check(true);
      }
      if (!(fromForm && error instanceof APIError && error.status === 400)) {
        const { message, actions } = errorNotice(
          `Could not launch ${label}`,
          error
        );
        if (pending === null) {
          Notification.error(message, { autoClose: false, actions });
        } else {
          await toastSettled(shownAt);
          Notification.update({
            id: pending,
            message,
            type: 'error',
            autoClose: false,
            actions
          });
        }
      }
      throw error;
    }
  };

  commands.addCommand(CommandIDs.openPanel, {
    label: PANEL_TITLE,
    caption: 'Open the EC2 instances panel',
    icon: args => (args.isPalette ? undefined : ec2Icon),
    describedBy: PROFILE_ARGS_SCHEMA,
    execute: args => {
      const profile = profileArg(args);
      if (profile !== null) {
        model.select(profile);
      }
      let widget = tracker.find(panel => !panel.isDisposed);
      if (!widget) {
        widget = createPanel({
          model,
          commands,
          launch: request => launch(request, true),
          preflight,
          images
        });
        void tracker.add(widget);
        shell.add(widget, 'main');
      }
      shell.activateById(widget.id);
      // The launcher puts a returned widget in its own place.
      return widget;
    }
  });

  commands.addCommand(CommandIDs.launchProfile, {
    label: args => {
      const profile = model.profile(profileArg(args));
      const name = profile?.display_name ?? profileArg(args) ?? 'EC2 instance';
      return args.isPalette ? `Launch ${name}` : name;
    },
    caption: args => {
      const profile = model.profile(profileArg(args));
      if (!profile) {
        return 'Launch an EC2 instance';
      }
      const spot = profile.spot ? ' (spot)' : '';
      return `Launch ${profile.instance_type}${spot} in ${profile.region}`;
    },
    icon: args => (args.isPalette ? undefined : ec2Icon),
    describedBy: LAUNCH_ARGS_SCHEMA,
    execute: async args => {
      await model.ready;
      const profile =
        profileArg(args) ?? model.selected ?? model.defaultProfile;
      if (profile === null) {
        Notification.warning(
          'There is no launch profile: add one to c.EC2Launcher.profiles.'
        );
        return undefined;
      }
      // Failures are told by the launch notification.
      const launching = launch(launchRequestOf(profile, args), false);
      launching.catch(() => undefined);
      if (args.openPanel === false) {
        return launching.then(
          instance => instance.id,
          () => undefined
        );
      }
      return commands.execute(CommandIDs.openPanel, { profile });
    }
  });

  commands.addCommand(CommandIDs.refresh, {
    label: 'Refresh EC2 Profiles and Instances',
    caption: 'Reload launch profiles and instances from the server',
    icon: args => (args.isPalette ? undefined : refreshIcon),
    execute: () => model.refresh()
  });

  /** The instance a command is about: its `id`, or one the user picks. */
  const pick = async (
    args: ReadonlyPartialJSONObject,
    action: InstanceAction
  ): Promise<IInstance | null> => {
    const id = idArg(args);
    if (id !== null) {
      const instance = model.instance(id);
      if (instance === undefined) {
        Notification.warning(`jupyter-ec2 does not manage an instance ${id}.`);
        return null;
      }
      return instance;
    }
    const candidates = model.instances.filter(item => offers(item, action));
    if (candidates.length === 0) {
      Notification.info(`No instance can be ${PAST_PARTICIPLES[action]} now.`, {
        autoClose: 5000
      });
      return null;
    }
    if (candidates.length === 1) {
      return candidates[0];
    }
    const labels = candidates.map(
      item => `${item.name} · ${item.id} · ${item.phase}`
    );
    const result = await InputDialog.getItem({
      title: PICK_LABELS[action].replace('…', ''),
      items: labels
    });
    if (!result.button.accept || result.value === null) {
      return null;
    }
    return candidates[labels.indexOf(result.value)] ?? null;
  };

  /** What each instance command does once it knows the instance. */
  const run: Record<InstanceAction, (instance: IInstance) => Promise<void>> = {
    open: async instance => {
      if (!(await openInstance(instance))) {
        Notification.warning(
          instance.url
            ? 'The browser did not open a new tab: allow pop-ups for this page.'
            : `${instance.name} is not ready yet.`
        );
      }
    },
    stop: async instance => {
      await model.act(instance.id, 'stop');
      Notification.info(
        `Stopping ${instance.name}. Its disk is kept; start it again from the panel.`,
        { autoClose: 5000 }
      );
    },
    start: async instance => {
      const started = await model.act(instance.id, 'start');
      notifier.watch(started.id, started.name);
    },
    reconnect: async instance => {
      const reconnecting = await model.act(instance.id, 'reconnect');
      notifier.watch(reconnecting.id, reconnecting.name);
    },
    resize: async instance => {
      const resizing = await resizeWithDialog(instance, model.serverSettings);
      if (resizing !== null) {
        await model.refresh();
        notifier.watch(resizing.id, resizing.name);
      }
    },
    image: async instance => {
      await commands.execute(CommandIDs.saveImage, { id: instance.id });
    },
    terminate: async instance => {
      if (!(await confirmTerminate(instance))) {
        return;
      }
      await model.terminate(instance.id);
    },
    log: async instance => {
      await commands.execute(CommandIDs.openPanel);
      model.toggleLog(instance.id);
    }
  };

  for (const [id, action, caption] of INSTANCE_COMMANDS) {
    commands.addCommand(id, {
      label: args => {
        const instance = model.instance(idArg(args));
        if (instance === undefined) {
          return PICK_LABELS[action];
        }
        if (action === 'log') {
          return model.log(instance.id) ? 'Hide log' : 'Show log';
        }
        return `${ACTION_LABELS[action]} ${instance.name}`;
      },
      caption,
      describedBy: ID_ARGS_SCHEMA,
      isEnabled: args => {
        const instance = model.instance(idArg(args));
        if (instance !== undefined) {
          return offers(instance, action);
        }
        return (
          idArg(args) !== null ||
          model.instances.some(item => offers(item, action))
        );
      },
      execute: async args => {
        const instance = await pick(args, action);
        if (instance === null) {
          return;
        }
        try {
          await run[action](instance);
        } catch (error) {
          notifyError(
            `Could not ${ACTION_LABELS[action].toLowerCase()} ${instance.name}`,
            error
          );
        }
      }
    });
  }
}
