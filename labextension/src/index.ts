/**
 * The jupyter-ec2 lab extension: its plugin objects.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  Notification,
  WidgetTracker
} from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { addCommands, PanelTracker } from './commands';
import { ProfileTiles } from './launcher';
import { EC2Model } from './model';
import { ErrorNotifier } from './notifications';
import {
  CATEGORY,
  CommandIDs,
  DEFAULT_REFRESH_SECONDS,
  PANEL_ID,
  PLUGIN_ID,
  TRACKER_NAMESPACE
} from './tokens';

/** Launcher tiles, the palette command and the restorable "EC2 instances" panel. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Launch, provision and open Jupyter on your own EC2 instances.',
  autoStart: true,
  optional: [ILauncher, ILayoutRestorer, ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    launcher: ILauncher | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null
  ): void => {
    const model = new EC2Model({
      serverSettings: app.serviceManager.serverSettings
    });
    const tracker: PanelTracker = new WidgetTracker({
      namespace: TRACKER_NAMESPACE
    });
    addCommands(app, model, tracker);
    new ErrorNotifier(model);

    if (launcher) {
      new ProfileTiles(launcher, model);
    }
    if (palette) {
      palette.addItem({ command: CommandIDs.openPanel, category: CATEGORY });
      palette.addItem({ command: CommandIDs.refresh, category: CATEGORY });
    }
    if (restorer) {
      void restorer.restore(tracker, {
        command: CommandIDs.openPanel,
        name: () => PANEL_ID
      });
    }
    if (settingRegistry) {
      const apply = (settings: ISettingRegistry.ISettings): void => {
        const seconds = settings.get('refreshSeconds').composite;
        model.refreshSeconds =
          typeof seconds === 'number' ? seconds : DEFAULT_REFRESH_SECONDS;
      };
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          apply(settings);
          settings.changed.connect(apply);
        })
        .catch((reason: unknown) => {
          const message = reason instanceof Error ? reason.message : reason;
          Notification.warning(`jupyter-ec2 settings not loaded: ${message}`);
        });
    }
  }
};

export default [plugin];
