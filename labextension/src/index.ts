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
import { IStatusBar } from '@jupyterlab/statusbar';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { addCommands, PanelTracker } from './commands';
import { profileTiles } from './launcher';
import { EC2Model } from './model';
import { CostBar } from './costbar';
import { ForgottenWarning } from './forgottenwarning';
import { IdleWarning } from './idlewarning';
import { addImageCommands, ImagesModel } from './images';
import { ErrorNotifier, InstanceNotifier } from './notifications';
import { profilePaletteItems } from './palette';
import { addWorkersCommand } from './workers';
import { addPreflightCommand, PreflightModel } from './preflight';
import {
  CATEGORY,
  CommandIDs,
  DEFAULT_AUTO_OPEN,
  DEFAULT_REFRESH_SECONDS,
  PANEL_ID,
  PLUGIN_ID,
  TRACKER_NAMESPACE
} from './tokens';

/** Launcher tiles, palette commands, notifications and the restorable "EC2 instances" panel. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Launch, provision and open Jupyter on your own EC2 instances.',
  autoStart: true,
  optional: [
    ILauncher,
    ILayoutRestorer,
    ICommandPalette,
    ISettingRegistry,
    IStatusBar
  ],
  activate: (
    app: JupyterFrontEnd,
    launcher: ILauncher | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null
  ): void => {
    const model = new EC2Model({
      serverSettings: app.serviceManager.serverSettings
    });
    const tracker: PanelTracker = new WidgetTracker({
      namespace: TRACKER_NAMESPACE
    });
    const notifier = new InstanceNotifier(model, {
      showPanel: () => void app.commands.execute(CommandIDs.openPanel),
      showLog: id => {
        if (!model.log(id)) {
          void app.commands.execute(CommandIDs.toggleLog, { id });
        } else {
          void app.commands.execute(CommandIDs.openPanel);
        }
      }
    });
    // "Check setup": checked once at start, again from the palette or the banner.
    const preflight = new PreflightModel({
      serverSettings: app.serviceManager.serverSettings
    });
    const images = new ImagesModel({
      serverSettings: app.serviceManager.serverSettings
    });
    addCommands(app, model, tracker, notifier, preflight, images);
    addImageCommands(app, model, images, palette);
    addPreflightCommand(app, preflight, palette);
    addWorkersCommand(app, model, palette);
    void preflight.check();
    new ErrorNotifier(model);
    new IdleWarning(model);
    new ForgottenWarning(model);
    if (statusBar) {
      statusBar.registerStatusItem(`${PLUGIN_ID}:costs`, {
        item: new CostBar(
          model,
          () => void app.commands.execute(CommandIDs.openPanel)
        ),
        align: 'left',
        rank: 900
      });
    }

    if (launcher) {
      profileTiles(launcher, model);
    }
    if (palette) {
      [
        CommandIDs.openPanel,
        CommandIDs.refresh,
        CommandIDs.openInstance,
        CommandIDs.startInstance,
        CommandIDs.stopInstance,
        CommandIDs.reconnectInstance,
        CommandIDs.terminateInstance,
        CommandIDs.resizeInstance,
        CommandIDs.toggleLog
      ].forEach(command =>
        palette.addItem({
          command,
          category: CATEGORY,
          args: { isPalette: true }
        })
      );
      profilePaletteItems(palette, model);
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
        const autoOpen = settings.get('autoOpen').composite;
        notifier.autoOpen =
          typeof autoOpen === 'boolean' ? autoOpen : DEFAULT_AUTO_OPEN;
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
