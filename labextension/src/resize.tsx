/**
 * The Resize dialog: the types an instance may become on the same disk, with their $/h,
 * and, for the types it may not become, why (from `GET instances/{id}/resize-options`).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { requestAPI } from './request';
import { IInstance, IResizeOption, IResizeOptions } from './tokens';

/** `GET instances/{id}/resize-options`. */
export function fetchResizeOptions(
  id: string,
  serverSettings: ServerConnection.ISettings
): Promise<IResizeOptions> {
  return requestAPI<IResizeOptions>(
    `instances/${encodeURIComponent(id)}/resize-options`,
    { method: 'GET' },
    serverSettings
  );
}

/** `POST instances/{id}/resize` `{"instance_type": t}`: answers the instance (202). */
export function postResize(
  id: string,
  instanceType: string,
  serverSettings: ServerConnection.ISettings
): Promise<IInstance> {
  return requestAPI<IInstance>(
    `instances/${encodeURIComponent(id)}/resize`,
    { method: 'POST', body: JSON.stringify({ instance_type: instanceType }) },
    serverSettings
  );
}

/** `$0.1008/h`, or words when AWS states no price. */
export function formatHourly(usd: number | null | undefined): string {
  return typeof usd === 'number' ? `$${usd.toFixed(4)}/h` : 'price unknown';
}

/** One line about a type: vCPUs, memory, GPUs. */
export function describeType(option: IResizeOption): string {
  const parts: string[] = [];
  if (typeof option.vcpus === 'number') {
    parts.push(`${option.vcpus} vCPU`);
  }
  if (typeof option.memory_gib === 'number') {
    parts.push(`${option.memory_gib} GiB`);
  }
  if (option.gpus && option.gpus.length > 0) {
    parts.push(`${option.gpus.length} × ${option.gpus[0]}`);
  }
  return parts.join(' · ');
}

/** Properties of a {@link ResizeChoices}. */
export interface IResizeChoicesProps {
  options: IResizeOptions;
  selected: string | null;
  onSelect: (instanceType: string) => void;
}

/** The list: compatible types to pick from, then the excluded ones with the reason. */
export function ResizeChoices(props: IResizeChoicesProps): JSX.Element {
  const { options, selected, onSelect } = props;
  const compatible = options.types.filter(t => t.compatible);
  const excluded = options.types.filter(t => !t.compatible);
  return (
    <div className="jp-ec2-resize" data-testid="ec2-resize">
      <p>
        Now {options.current.instance_type} (
        {formatHourly(options.current.hourly_usd)}) in{' '}
        {options.availability_zone ?? 'its zone'}. A running instance is
        stopped, changed and started again: its disk, files and environment are
        kept; the notebook server restarts, so running kernels end.
      </p>
      {compatible.length === 0 ? (
        <p data-testid="ec2-resize-none">No listed type fits this instance.</p>
      ) : (
        <ul className="jp-ec2-resize-list" role="radiogroup">
          {compatible.map(option => (
            <li key={option.instance_type}>
              <label>
                <input
                  type="radio"
                  name="jp-ec2-resize-type"
                  value={option.instance_type}
                  checked={selected === option.instance_type}
                  onChange={() => onSelect(option.instance_type)}
                  data-testid="ec2-resize-option"
                />{' '}
                <strong>{option.instance_type}</strong>{' '}
                <span>{formatHourly(option.hourly_usd)}</span>{' '}
                <span className="jp-ec2-resize-facts">
                  {describeType(option)}
                </span>
              </label>
            </li>
          ))}
        </ul>
      )}
      {excluded.length > 0 && (
        <details>
          <summary>Not possible for this instance ({excluded.length})</summary>
          <ul className="jp-ec2-resize-excluded">
            {excluded.map(option => (
              <li
                key={option.instance_type}
                data-reason={option.reason ?? ''}
                data-testid="ec2-resize-excluded"
              >
                <strong>{option.instance_type}</strong>{' '}
                {formatHourly(option.hourly_usd)}: {option.message}
              </li>
            ))}
          </ul>
        </details>
      )}
    </div>
  );
}

/** The dialog's body: keeps the choice, which is the dialog's value. */
export class ResizeBody
  extends ReactWidget
  implements Dialog.IBodyWidget<string | null>
{
  constructor(options: IResizeOptions) {
    super();
    this._options = options;
    const first = options.types.find(t => t.compatible);
    this._selected = first ? first.instance_type : null;
  }

  /** The chosen type, or null. */
  getValue(): string | null {
    return this._selected;
  }

  protected render(): JSX.Element {
    return (
      <ResizeChoices
        options={this._options}
        selected={this._selected}
        onSelect={instanceType => {
          this._selected = instanceType;
          this.update();
        }}
      />
    );
  }

  private readonly _options: IResizeOptions;
  private _selected: string | null;
}

/**
 * Ask which type `instance` should become, then resize it.
 *
 * @returns the instance as the server answered (phase stopping or resizing), or null when
 *   the user cancelled or nothing fits
 */
export async function resizeWithDialog(
  instance: IInstance,
  serverSettings: ServerConnection.ISettings
): Promise<IInstance | null> {
  const options = await fetchResizeOptions(instance.id, serverSettings);
  const body = new ResizeBody(options);
  const result = await showDialog<string | null>({
    title: `Resize ${instance.name}`,
    body,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Resize' })],
    defaultButton: 0
  });
  if (!result.button.accept || !result.value) {
    return null;
  }
  return postResize(instance.id, result.value, serverSettings);
}
