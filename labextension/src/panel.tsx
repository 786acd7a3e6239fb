/**
 * The "EC2 instances" panel: renders the model, never fetches.
 */
import { MainAreaWidget } from '@jupyterlab/apputils';
import {
  CommandToolbarButton,
  ReactWidget,
  UseSignal
} from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import * as React from 'react';

import { ProfileList, StatusBanner } from './components';
import { ec2Icon } from './icons';
import { EC2Model } from './model';
import { CommandIDs, PANEL_ID } from './tokens';

/** The panel's title, tab label and palette label. */
export const PANEL_TITLE = 'EC2 instances';

/** Properties of a {@link PanelView}. */
export interface IPanelViewProps {
  model: EC2Model;
}

/** The whole panel for one state of the model. */
export function PanelView(props: IPanelViewProps): JSX.Element {
  const { model } = props;
  const onSelect = (name: string): void => model.select(name);
  return (
    <div className="jp-ec2-panel-body" data-status={model.status}>
      <StatusBanner status={model.status} error={model.error} />
      {model.status === 'ready' && (
        <>
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
          <section
            className="jp-ec2-section"
            aria-labelledby="jp-ec2-instances-h"
          >
            <h2 id="jp-ec2-instances-h" className="jp-ec2-section-title">
              Instances
            </h2>
            <p className="jp-ec2-empty" data-testid="ec2-no-instances">
              No instances yet.
            </p>
          </section>
        </>
      )}
    </div>
  );
}

/** The panel's content: re-renders {@link PanelView} on every model change. */
export class EC2Panel extends ReactWidget {
  constructor(model: EC2Model) {
    super();
    this.model = model;
    this.addClass('jp-ec2-panel');
    this.node.dataset.testid = 'ec2-panel';
  }

  /** The model this panel renders. */
  readonly model: EC2Model;

  protected render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => <PanelView model={this.model} />}
      </UseSignal>
    );
  }
}

/** A new main-area panel with a refresh button in its toolbar. */
export function createPanel(
  model: EC2Model,
  commands: CommandRegistry
): MainAreaWidget<EC2Panel> {
  const content = new EC2Panel(model);
  const widget = new MainAreaWidget({ content });
  widget.id = PANEL_ID;
  widget.title.label = PANEL_TITLE;
  widget.title.caption = 'Launch and manage EC2 instances';
  widget.title.icon = ec2Icon;
  widget.title.closable = true;
  widget.toolbar.addItem(
    'refresh',
    new CommandToolbarButton({
      commands,
      id: CommandIDs.refresh,
      label: ''
    })
  );
  return widget;
}
