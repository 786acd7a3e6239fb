/**
 * The extension's commands: open the panel, launch from a profile, refresh.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { refreshIcon } from '@jupyterlab/ui-components';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';

import { ec2Icon } from './icons';
import { EC2Model } from './model';
import { createPanel, EC2Panel, PANEL_TITLE } from './panel';
import { CommandIDs } from './tokens';

/** The tracker of the (single) instances panel. */
export type PanelTracker = WidgetTracker<MainAreaWidget<EC2Panel>>;

/** The `profile` argument of a command, if it is a non-empty string. */
export function profileArg(args: ReadonlyPartialJSONObject): string | null {
  const profile = args.profile;
  return typeof profile === 'string' && profile.length > 0 ? profile : null;
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

/** Register the commands on `app.commands`. */
export function addCommands(
  app: JupyterFrontEnd,
  model: EC2Model,
  tracker: PanelTracker
): void {
  const { commands, shell } = app;

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
        widget = createPanel(model, commands);
        void tracker.add(widget);
        shell.add(widget, 'main');
      }
      shell.activateById(widget.id);
      // The launcher puts a returned widget in its own place.
      return widget;
    }
  });

  commands.addCommand(CommandIDs.launchProfile, {
    label: args =>
      model.profile(profileArg(args))?.display_name ??
      profileArg(args) ??
      'EC2 instance',
    caption: args => {
      const profile = model.profile(profileArg(args));
      if (!profile) {
        return 'Launch an EC2 instance';
      }
      const spot = profile.spot ? ' (spot)' : '';
      return `Launch ${profile.instance_type}${spot} in ${profile.region}`;
    },
    icon: ec2Icon,
    describedBy: PROFILE_ARGS_SCHEMA,
    execute: args =>
      commands.execute(CommandIDs.openPanel, {
        profile: profileArg(args) ?? ''
      })
  });

  commands.addCommand(CommandIDs.refresh, {
    label: 'Refresh EC2 profiles and instances',
    caption: 'Reload launch profiles and instances from the server',
    icon: args => (args.isPalette ? undefined : refreshIcon),
    execute: () => model.refresh()
  });
}
