/**
 * Saved images: their model, the panel's "Images" section, the "Save as image" dialog and the
 * image commands (save, launch from, delete, refresh).
 *
 * The server decides what is allowed (`Instance.actions` holds `image` when an instance can be
 * saved) and what an image costs; this module only shows it and asks.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  InputDialog,
  Notification,
  showDialog
} from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { ReactWidget } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';
import * as React from 'react';

import { notifyError } from './actions';
import { offers } from './instances';
import { EC2Model } from './model';
import { requestAPI } from './request';
import {
  CATEGORY,
  CommandIDs,
  IImage,
  IImageRequest,
  IImagesReply,
  IInstance
} from './tokens';

/** Seconds between two reads of the images; faster while one is pending. */
const IMAGES_REFRESH_SECONDS = 60;
const IMAGES_PENDING_SECONDS = 5;

/** What the two ways of saving a running instance mean, in the user's words. */
export const REBOOT_CHOICES = {
  reboot:
    'Reboot for a consistent image: EC2 restarts the instance around the snapshot, ' +
    'so every file is saved whole. Running kernels stop and the notebook restarts.',
  noReboot:
    'Save without a reboot: nothing is interrupted, but files being written at that ' +
    'moment may be incomplete in the image.'
} as const;

/** `$1.50/month`, or `null` when the price is unknown. */
export function formatMonthly(usd: number | null): string | null {
  if (usd === null || !Number.isFinite(usd)) {
    return null;
  }
  return `$${usd.toFixed(2)}/month`;
}

/** The `id` argument of a command, if it is a non-empty string. */
function idArg(args: ReadonlyPartialJSONObject): string | null {
  const id = args.id;
  return typeof id === 'string' && id.length > 0 ? id : null;
}

/** The `image` argument of a command, if it is an image id. */
export function imageArg(args: ReadonlyPartialJSONObject): string | null {
  const image = args.image;
  return typeof image === 'string' && image.startsWith('ami-') ? image : null;
}

/** The saved images, polled from `GET images`; emits `changed` when anything shown changes. */
export class ImagesModel {
  constructor(options: { serverSettings: ServerConnection.ISettings }) {
    this._serverSettings = options.serverSettings;
    this._poll = new Poll({
      auto: false,
      factory: () => this._load(),
      frequency: {
        interval: IMAGES_REFRESH_SECONDS * 1000,
        backoff: true,
        max: 300 * 1000
      },
      name: 'jupyter-ec2:images',
      standby: 'when-hidden'
    });
    void this._poll.start();
  }

  /** Emitted whenever the list, or the last error, changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The saved images, newest first. */
  get images(): ReadonlyArray<IImage> {
    return this._images;
  }

  /** Why the last load failed, or `null`. */
  get error(): string | null {
    return this._error;
  }

  /** One image by id. */
  image(id: string | null): IImage | undefined {
    return this._images.find(image => image.id === id);
  }

  /** Load the images now. */
  async refresh(): Promise<void> {
    await this._poll.refresh();
    await this._poll.tick;
  }

  /** Save an instance as an image: `POST instances/{id}/image`. */
  async save(instanceId: string, request: IImageRequest): Promise<IImage> {
    const image = await requestAPI<IImage>(
      `instances/${encodeURIComponent(instanceId)}/image`,
      { method: 'POST', body: JSON.stringify(request) },
      this._serverSettings
    );
    this._images = [image, ...this._images.filter(i => i.id !== image.id)];
    this._changed.emit();
    this._schedule();
    return image;
  }

  /** Delete an image and its snapshots: `DELETE images/{ami}`. */
  async remove(imageId: string): Promise<IImage> {
    const image = await requestAPI<IImage>(
      `images/${encodeURIComponent(imageId)}`,
      { method: 'DELETE' },
      this._serverSettings
    );
    this._images = this._images.filter(i => i.id !== imageId);
    this._changed.emit();
    return image;
  }

  /** Stop polling. */
  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private async _load(): Promise<void> {
    try {
      const reply = await requestAPI<IImagesReply>(
        'images',
        {},
        this._serverSettings
      );
      const changed =
        JSON.stringify(reply.images) !== JSON.stringify(this._images) ||
        this._error !== null;
      this._images = reply.images;
      this._error = null;
      if (changed) {
        this._changed.emit();
      }
    } catch (error) {
      this._error = error instanceof Error ? error.message : String(error);
      this._changed.emit();
    }
    this._schedule();
  }

  /** Poll faster while EC2 is still making an image. */
  private _schedule(): void {
    const pending = this._images.some(image => image.state === 'pending');
    const seconds = pending ? IMAGES_PENDING_SECONDS : IMAGES_REFRESH_SECONDS;
    if (this._poll.frequency.interval !== seconds * 1000) {
      this._poll.frequency = {
        ...this._poll.frequency,
        interval: seconds * 1000
      };
    }
  }

  private readonly _serverSettings: ServerConnection.ISettings;
  private readonly _poll: Poll;
  private readonly _changed = new Signal<this, void>(this);
  private _images: IImage[] = [];
  private _error: string | null = null;
}

/** Properties of an {@link ImagesSection}. */
export interface IImagesSectionProps {
  images: ImagesModel;
  commands: CommandRegistry;
}

/** The panel's "Images" section: one row per saved image, with its state, size and cost. */
export function ImagesSection(props: IImagesSectionProps): JSX.Element {
  const { images, commands } = props;
  return (
    <section
      className="jp-ec2-section jp-ec2-images"
      aria-labelledby="jp-ec2-images-h"
      data-testid="ec2-images"
    >
      <h2 id="jp-ec2-images-h" className="jp-ec2-section-title">
        Images
      </h2>
      {images.error !== null && (
        <p className="jp-ec2-banner jp-ec2-banner-error" role="alert">
          Saved images could not be listed: {images.error}
        </p>
      )}
      {images.images.length === 0 ? (
        <p className="jp-ec2-empty">
          No saved image. "Save as image" on an instance keeps its disk (the
          environment and your files) to launch from later in seconds.
        </p>
      ) : (
        <ul className="jp-ec2-image-list">
          {images.images.map(image => (
            <ImageRow key={image.id} image={image} commands={commands} />
          ))}
        </ul>
      )}
    </section>
  );
}

/** One saved image. */
function ImageRow(props: {
  image: IImage;
  commands: CommandRegistry;
}): JSX.Element {
  const { image, commands } = props;
  const monthly = formatMonthly(image.monthly_usd);
  return (
    <li
      className={`jp-ec2-image jp-ec2-image-${image.state}`}
      data-testid="ec2-image"
      data-image-id={image.id}
      data-state={image.state}
    >
      <div className="jp-ec2-instance-header">
        <span className="jp-ec2-instance-name">{image.name}</span>
        <span className={`jp-ec2-phase jp-ec2-image-state-${image.state}`}>
          {image.state}
        </span>
        <span
          className="jp-ec2-price"
          data-testid="ec2-image-monthly"
          title={
            monthly === null
              ? 'AWS did not state the EBS snapshot price here'
              : 'What its EBS snapshots cost a month at most (EBS bills the blocks they hold)'
          }
        >
          {monthly ?? '$?/month'}
        </span>
      </div>
      <dl className="jp-ec2-instance-facts">
        <div className="jp-ec2-fact">
          <dt>Image</dt>
          <dd>
            <code>{image.id}</code>
          </dd>
        </div>
        <div className="jp-ec2-fact">
          <dt>Size</dt>
          <dd>{image.size_gb === null ? '…' : `${image.size_gb} GB`}</dd>
        </div>
        <div className="jp-ec2-fact">
          <dt>From</dt>
          <dd>
            <code>{image.source_instance ?? '?'}</code>
          </dd>
        </div>
        {image.environment && (
          <div className="jp-ec2-fact">
            <dt>Environment</dt>
            <dd>{image.environment}</dd>
          </div>
        )}
      </dl>
      <div className="jp-ec2-actions" role="group" aria-label="Image actions">
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-mod-accept jp-ec2-action"
          data-action="launch-from-image"
          disabled={image.state !== 'available'}
          title={
            image.state === 'available'
              ? 'Launch an instance from this image'
              : 'EC2 is still making this image'
          }
          onClick={() =>
            void commands.execute(CommandIDs.launchFromImage, {
              image: image.id
            })
          }
        >
          Launch from image
        </button>
        <button
          type="button"
          className="jp-Button jp-mod-styled jp-mod-warn jp-ec2-action"
          data-action="delete-image"
          disabled={image.state === 'pending'}
          onClick={() =>
            void commands.execute(CommandIDs.deleteImage, { image: image.id })
          }
        >
          Delete
        </button>
      </div>
    </li>
  );
}

/** The "Save as image" dialog's body: a name and, for a running instance, the reboot choice. */
export class SaveImageBody
  extends ReactWidget
  implements Dialog.IBodyWidget<IImageRequest>
{
  constructor(instance: IInstance) {
    super();
    this._instance = instance;
    this._name = instance.name;
    this.addClass('jp-ec2-confirm');
    this.node.dataset.testid = 'ec2-save-image';
  }

  /** What the user chose. */
  getValue(): IImageRequest {
    const request: IImageRequest = { reboot: this._reboot };
    if (this._name.trim() !== '') {
      request.name = this._name.trim();
    }
    return request;
  }

  protected render(): JSX.Element {
    const running = this._instance.phase !== 'stopped';
    return (
      <div>
        <p>
          The image keeps the whole disk of {this._instance.name}: the
          environment and your files. A launch from it skips every setup step
          already done. Its snapshots cost storage each month until you delete
          it.
        </p>
        <label>
          Name{' '}
          <input
            className="jp-mod-styled"
            defaultValue={this._name}
            maxLength={100}
            onChange={event => (this._name = event.target.value)}
          />
        </label>
        {running ? (
          <fieldset className="jp-ec2-reboot-choice">
            <legend>The instance is running</legend>
            <label>
              <input
                type="radio"
                name="jp-ec2-reboot"
                defaultChecked={this._reboot}
                onChange={() => (this._reboot = true)}
              />{' '}
              {REBOOT_CHOICES.reboot}
            </label>
            <label>
              <input
                type="radio"
                name="jp-ec2-reboot"
                defaultChecked={!this._reboot}
                onChange={() => (this._reboot = false)}
              />{' '}
              {REBOOT_CHOICES.noReboot}
            </label>
          </fieldset>
        ) : (
          <p>It is stopped, so the image is consistent.</p>
        )}
      </div>
    );
  }

  private readonly _instance: IInstance;
  private _name: string;
  private _reboot = true;
}

/** Register the image commands, and add them to the palette when there is one. */
export function addImageCommands(
  app: JupyterFrontEnd,
  model: EC2Model,
  images: ImagesModel,
  palette: ICommandPalette | null
): void {
  const { commands } = app;

  const pickInstance = async (
    args: ReadonlyPartialJSONObject
  ): Promise<IInstance | null> => {
    const given = model.instance(idArg(args));
    if (given !== undefined) {
      return given;
    }
    const candidates = model.instances.filter(item => offers(item, 'image'));
    if (candidates.length === 0) {
      Notification.info('No instance can be saved as an image now.', {
        autoClose: 5000
      });
      return null;
    }
    if (candidates.length === 1) {
      return candidates[0];
    }
    const labels = candidates.map(i => `${i.name} · ${i.id} · ${i.phase}`);
    const result = await InputDialog.getItem({
      title: 'Save an EC2 Instance as an Image',
      items: labels
    });
    return result.button.accept && result.value !== null
      ? (candidates[labels.indexOf(result.value)] ?? null)
      : null;
  };

  const pickImage = async (
    args: ReadonlyPartialJSONObject,
    usable: (image: IImage) => boolean,
    title: string
  ): Promise<IImage | null> => {
    await images.refresh();
    const given = images.image(imageArg(args));
    if (given !== undefined) {
      return given;
    }
    const candidates = images.images.filter(usable);
    if (candidates.length === 0) {
      Notification.info('There is no saved image for that now.', {
        autoClose: 5000
      });
      return null;
    }
    const labels = candidates.map(i => `${i.name} · ${i.id}`);
    const result = await InputDialog.getItem({ title, items: labels });
    return result.button.accept && result.value !== null
      ? (candidates[labels.indexOf(result.value)] ?? null)
      : null;
  };

  commands.addCommand(CommandIDs.saveImage, {
    label: args => {
      const instance = model.instance(idArg(args));
      return instance
        ? `Save ${instance.name} as an Image`
        : 'Save an EC2 Instance as an Image…';
    },
    caption:
      "Keep the instance's disk as an image, to launch from later without setting up again",
    isEnabled: args => {
      const instance = model.instance(idArg(args));
      return instance
        ? offers(instance, 'image')
        : model.instances.some(i => offers(i, 'image'));
    },
    execute: async args => {
      const instance = await pickInstance(args);
      if (instance === null) {
        return;
      }
      const result = await showDialog({
        title: `Save ${instance.name} as an image?`,
        body: new SaveImageBody(instance),
        buttons: [
          Dialog.cancelButton(),
          Dialog.okButton({ label: 'Save image' })
        ]
      });
      if (!result.button.accept || result.value === null) {
        return;
      }
      try {
        const image = await images.save(instance.id, result.value);
        Notification.info(
          `Saving ${image.name} (${image.id}); EC2 takes a few minutes. It is listed under Images.`,
          { autoClose: 8000 }
        );
        void model.refresh();
      } catch (error) {
        notifyError(`Could not save ${instance.name} as an image`, error);
      }
    }
  });

  commands.addCommand(CommandIDs.launchFromImage, {
    label: args => {
      const image = images.image(imageArg(args));
      return image
        ? `Launch from ${image.name}`
        : 'Launch an EC2 Instance from a Saved Image…';
    },
    caption: 'Launch an instance whose disk is a copy of a saved image',
    execute: async args => {
      const image = await pickImage(
        args,
        i => i.state === 'available',
        'Launch from Image'
      );
      if (image === null) {
        return;
      }
      if (image.state !== 'available') {
        Notification.warning(`${image.name} is ${image.state}, not available.`);
        return;
      }
      const profile =
        (typeof args.profile === 'string' && args.profile) ||
        model.selected ||
        model.defaultProfile;
      if (!profile) {
        Notification.warning(
          'There is no launch profile: add one to c.EC2Launcher.profiles.'
        );
        return;
      }
      await commands.execute(CommandIDs.launchProfile, {
        profile,
        name: image.name,
        overrides: { ami: image.id }
      });
    }
  });

  commands.addCommand(CommandIDs.deleteImage, {
    label: args => {
      const image = images.image(imageArg(args));
      return image ? `Delete ${image.name}` : 'Delete a Saved EC2 Image…';
    },
    caption: 'Deregister a saved image and delete its snapshots',
    execute: async args => {
      const image = await pickImage(
        args,
        i => i.state !== 'pending',
        'Delete Image'
      );
      if (image === null) {
        return;
      }
      const confirm = await showDialog({
        title: 'Delete the image?',
        body:
          `Delete ${image.name} (${image.id})? It is deregistered and its snapshots ` +
          'deleted; instances launched from it keep running. This cannot be undone.',
        buttons: [
          Dialog.cancelButton(),
          Dialog.warnButton({ label: 'Delete' })
        ],
        defaultButton: 0
      });
      if (!confirm.button.accept) {
        return;
      }
      try {
        await images.remove(image.id);
        Notification.info(`Deleted ${image.name} and its snapshots.`, {
          autoClose: 5000
        });
      } catch (error) {
        notifyError(`Could not delete ${image.name}`, error);
      }
    }
  });

  commands.addCommand(CommandIDs.refreshImages, {
    label: 'Refresh Saved EC2 Images',
    execute: () => images.refresh()
  });

  if (palette) {
    [
      CommandIDs.saveImage,
      CommandIDs.launchFromImage,
      CommandIDs.deleteImage,
      CommandIDs.refreshImages
    ].forEach(command =>
      palette.addItem({ command, category: CATEGORY, args: {} })
    );
  }
}
