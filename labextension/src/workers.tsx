/**
 * Dask workers of an instance: the "Add workers" control of its card, the list of its workers
 * with their phases, the dashboard link, and the palette command.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  ICommandPalette,
  InputDialog,
  Notification
} from '@jupyterlab/apputils';
import * as React from 'react';

import { notifyError } from './actions';
import { EC2Model } from './model';
import { CATEGORY, IInstance } from './tokens';

/** The command that adds workers (arg `id`, else ask; `count`, else ask). */
export const ADD_WORKERS_COMMAND = 'jupyter-ec2:add-workers';

/** The most workers one request may add (DESIGN.md §4). */
export const MAX_WORKERS = 20;

/** Properties of a {@link WorkersControl}. */
export interface IWorkersControlProps {
  instance: IInstance;
  model: EC2Model;
}

/** The workers of an instance, their phases, the dashboard link, and "Add workers". */
export function WorkersControl(
  props: IWorkersControlProps
): JSX.Element | null {
  const { instance, model } = props;
  const [count, setCount] = React.useState(2);
  const [type, setType] = React.useState('');
  const [busy, setBusy] = React.useState(false);
  const workers = instance.workers ?? [];
  const canAdd = instance.actions.includes('workers');
  if (!canAdd && workers.length === 0) {
    return null;
  }
  const add = async (): Promise<void> => {
    setBusy(true);
    try {
      await model.addWorkers(instance.id, count, type.trim() || undefined);
      Notification.info(`Adding ${count} Dask worker(s) to ${instance.name}.`, {
        autoClose: 4000
      });
    } catch (error) {
      notifyError('Could not add workers', error);
    } finally {
      setBusy(false);
    }
  };
  const remove = async (): Promise<void> => {
    setBusy(true);
    try {
      await model.removeWorkers(instance.id);
    } catch (error) {
      notifyError('Could not remove the workers', error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div className="jp-ec2-workers" data-testid="ec2-workers">
      {workers.length > 0 && (
        <ul className="jp-ec2-worker-list" aria-label="Dask workers">
          {workers.map(worker => (
            <li
              key={worker.id}
              className={`jp-ec2-worker jp-ec2-worker-${worker.phase}`}
              data-testid="ec2-worker"
              data-phase={worker.phase}
              title={worker.error ?? ''}
            >
              <code>{worker.id}</code> {worker.instance_type}: {worker.phase}
            </li>
          ))}
        </ul>
      )}
      {instance.dask && (
        <a
          className="jp-ec2-dashboard-link"
          data-testid="ec2-dask-dashboard"
          href={instance.dask.dashboard_url}
          target="_blank"
          rel="noopener noreferrer"
          title={`Scheduler ${instance.dask.scheduler}`}
        >
          Dask dashboard
        </a>
      )}
      {canAdd && (
        <div
          className="jp-ec2-add-workers"
          role="group"
          aria-label="Add workers"
        >
          <label>
            Workers{' '}
            <input
              type="number"
              min={1}
              max={MAX_WORKERS}
              value={count}
              aria-label="Number of workers"
              onChange={event =>
                setCount(
                  Math.max(
                    1,
                    Math.min(MAX_WORKERS, Number(event.target.value) || 1)
                  )
                )
              }
            />
          </label>
          <label>
            Type{' '}
            <input
              type="text"
              value={type}
              placeholder={instance.instance_type}
              aria-label="Worker instance type"
              onChange={event => setType(event.target.value)}
            />
          </label>
          <button
            type="button"
            className="jp-Button jp-mod-styled jp-ec2-action"
            data-action="add-workers"
            disabled={busy}
            onClick={() => void add()}
          >
            Add workers
          </button>
          {workers.length > 0 && (
            <button
              type="button"
              className="jp-Button jp-mod-styled jp-ec2-action jp-mod-warn"
              data-action="remove-workers"
              disabled={busy}
              onClick={() => void remove()}
            >
              Remove workers
            </button>
          )}
        </div>
      )}
    </div>
  );
}

/** Add the "Add Dask workers…" command (and its palette item). */
export function addWorkersCommand(
  app: JupyterFrontEnd,
  model: EC2Model,
  palette: ICommandPalette | null
): void {
  app.commands.addCommand(ADD_WORKERS_COMMAND, {
    label: 'Add Dask workers…',
    caption: 'Start Dask workers next to a ready instance',
    isEnabled: () =>
      model.instances.some(instance => instance.actions.includes('workers')),
    execute: async args => {
      const ready = model.instances.filter(instance =>
        instance.actions.includes('workers')
      );
      let id = typeof args.id === 'string' ? args.id : null;
      if (id === null) {
        const choice = await InputDialog.getItem({
          title: 'Add Dask workers to',
          items: ready.map(instance => `${instance.name} (${instance.id})`)
        });
        if (!choice.button.accept || choice.value === null) {
          return;
        }
        id =
          ready.find(
            instance => `${instance.name} (${instance.id})` === choice.value
          )?.id ?? null;
      }
      if (id === null) {
        return;
      }
      let count = typeof args.count === 'number' ? args.count : null;
      if (count === null) {
        const asked = await InputDialog.getNumber({
          title: 'How many workers (1–20)?',
          value: 2
        });
        if (!asked.button.accept || asked.value === null) {
          return;
        }
        count = asked.value;
      }
      try {
        await model.addWorkers(id, count);
      } catch (error) {
        notifyError('Could not add workers', error);
      }
    }
  });
  if (palette) {
    palette.addItem({ command: ADD_WORKERS_COMMAND, category: CATEGORY });
  }
}
