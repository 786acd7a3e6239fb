/**
 * The "EC2 instances" panel: renders the model, never fetches.
 *
 * Buttons run the extension's commands (with the instance's `id`), so the panel, the palette
 * and keyboard shortcuts behave alike.
 */
import { MainAreaWidget } from '@jupyterlab/apputils';
import {
  CommandToolbarButton,
  ReactWidget,
  UseSignal
} from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import * as React from 'react';

import {
  CredentialsHelp,
  InstanceList,
  LaunchForm,
  PreflightBanner,
  ProfileList,
  StatusBanner
} from './components';
import { ec2Icon } from './icons';
import { ImagesModel, ImagesSection } from './images';
import { EC2Model } from './model';
import { PreflightModel } from './preflight';
import {
  CommandIDs,
  IInstance,
  ILaunchRequest,
  InstanceAction,
  PANEL_ID
} from './tokens';

/** The panel's title, tab label and palette label. */
export const PANEL_TITLE = 'EC2 instances';

/** Launches from the form; rejects with the server's error so the form can show it. */
export type LaunchFunction = (request: ILaunchRequest) => Promise<unknown>;

/** The command that does each action of an instance card. */
export const ACTION_COMMANDS: Readonly<Record<InstanceAction, string>> = {
  open: CommandIDs.openInstance,
  stop: CommandIDs.stopInstance,
  start: CommandIDs.startInstance,
  reconnect: CommandIDs.reconnectInstance,
  resize: CommandIDs.resizeInstance,
  image: CommandIDs.saveImage,
  terminate: CommandIDs.terminateInstance,
  log: CommandIDs.toggleLog
};

/** Properties of a {@link PanelView}. */
export interface IPanelViewProps {
  model: EC2Model;
  commands: CommandRegistry;
  launch: LaunchFunction;
  /** The "Check setup" results, when the preflight plugin runs. */
  preflight?: PreflightModel;
  /** The saved images, shown in their own section. */
  images?: ImagesModel;
}

/** The whole panel for one state of the model. */
export function PanelView(props: IPanelViewProps): JSX.Element {
  const { model, commands, launch, preflight, images } = props;
  const onSelect = (name: string): void => model.select(name);
  const onAction = (action: InstanceAction, instance: IInstance): void => {
    void commands.execute(ACTION_COMMANDS[action], { id: instance.id });
  };
  return (
    <div className="jp-ec2-panel-body" data-status={model.status}>
      <StatusBanner status={model.status} error={model.error} />
      {preflight && (
        <PreflightBanner
          preflight={preflight}
          onCheck={() => void preflight.check(true)}
        />
      )}
      {model.credentialsProblem !== null && (
        <div
          className="jp-ec2-banner jp-ec2-banner-error"
          role="alert"
          data-testid="ec2-credentials"
        >
          <p>
            <strong>AWS credentials are not configured.</strong>
          </p>
          <CredentialsHelp />
        </div>
      )}
      {model.status === 'ready' && (
        <>
          <section
            className="jp-ec2-section"
            aria-labelledby="jp-ec2-instances-h"
          >
            <h2 id="jp-ec2-instances-h" className="jp-ec2-section-title">
              Instances
            </h2>
            <InstanceList model={model} onAction={onAction} />
          </section>
          {images && (
            <UseSignal signal={images.changed}>
              {() => <ImagesSection images={images} commands={commands} />}
            </UseSignal>
          )}
          <section
            className="jp-ec2-section"
            aria-labelledby="jp-ec2-profiles-h"
          >
            <h2 id="jp-ec2-profiles-h" className="jp-ec2-section-title">
              Launch profiles
            </h2>
            <ProfileList
              profiles={model.profiles}
              selected={model.selected}
              defaultProfile={model.defaultProfile}
              onSelect={onSelect}
            />
          </section>
          {model.profiles.length > 0 && (
            <section
              className="jp-ec2-section"
              aria-labelledby="jp-ec2-launch-h"
            >
              <h2 id="jp-ec2-launch-h" className="jp-ec2-section-title">
                Launch an instance
              </h2>
              <LaunchForm
                profiles={model.profiles}
                selected={model.selected}
                onSelect={onSelect}
                onLaunch={launch}
                blocked={preflight?.blockedProfiles}
              />
            </section>
          )}
        </>
      )}
    </div>
  );
}

/** The panel's content: re-renders {@link PanelView} on every model change. */
export class EC2Panel extends ReactWidget {
  constructor(options: EC2Panel.IOptions) {
    super();
    this.model = options.model;
    this._commands = options.commands;
    this._launch = options.launch;
    this._preflight = options.preflight;
    this._images = options.images;
    this.addClass('jp-ec2-panel');
    this.node.dataset.testid = 'ec2-panel';
  }

  /** The model this panel renders. */
  readonly model: EC2Model;

  protected render(): JSX.Element {
    const view = (): JSX.Element => (
      <UseSignal signal={this.model.changed}>
        {() => (
          <PanelView
            model={this.model}
            commands={this._commands}
            launch={this._launch}
            preflight={this._preflight}
            images={this._images}
          />
        )}
      </UseSignal>
    );
    if (this._preflight === undefined) {
      return view();
    }
    // Re-render on a new preflight answer as well as on the model's changes.
    return <UseSignal signal={this._preflight.changed}>{view}</UseSignal>;
  }

  private readonly _commands: CommandRegistry;
  private readonly _launch: LaunchFunction;
  private readonly _preflight?: PreflightModel;
  private readonly _images?: ImagesModel;
}

/** Companion of {@link EC2Panel}. */
export namespace EC2Panel {
  /** Options of a new panel. */
  export interface IOptions {
    model: EC2Model;
    commands: CommandRegistry;
    launch: LaunchFunction;
    /** The "Check setup" results shown as a banner and in the launch form. */
    preflight?: PreflightModel;
    /** The saved images (the "Images" section). */
    images?: ImagesModel;
  }
}

/** A new main-area panel with a refresh button in its toolbar. */
export function createPanel(
  options: EC2Panel.IOptions
): MainAreaWidget<EC2Panel> {
  const content = new EC2Panel(options);
  const widget = new MainAreaWidget({ content });
  widget.id = PANEL_ID;
  widget.title.label = PANEL_TITLE;
  widget.title.caption = 'Launch and manage EC2 instances';
  widget.title.icon = ec2Icon;
  widget.title.closable = true;
  widget.toolbar.addItem(
    'refresh',
    new CommandToolbarButton({
      commands: options.commands,
      id: CommandIDs.refresh,
      label: ''
    })
  );
  return widget;
}
