/**
 * Palette items: one "Launch …" item per launch profile, kept in step with the server.
 */
import { ICommandPalette } from '@jupyterlab/apputils';
import { IDisposable } from '@lumino/disposable';

import { EC2Model } from './model';
import { CATEGORY, CommandIDs } from './tokens';

/** The palette's "Launch <profile>" items, re-made whenever the profiles change. */
export class ProfilePaletteItems implements IDisposable {
  constructor(palette: ICommandPalette, model: EC2Model) {
    this._palette = palette;
    this._model = model;
    model.changed.connect(this._sync, this);
    this._sync();
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._model.changed.disconnect(this._sync, this);
    this._clear();
  }

  private _sync(): void {
    const key = JSON.stringify(
      this._model.profiles.map(profile => [profile.name, profile.display_name])
    );
    if (key === this._key) {
      return;
    }
    this._key = key;
    this._clear();
    this._model.profiles.forEach((profile, rank) => {
      this._items.push(
        this._palette.addItem({
          command: CommandIDs.launchProfile,
          // `isPalette` makes the label read "Launch …" (a JupyterLab convention).
          args: { profile: profile.name, isPalette: true },
          category: CATEGORY,
          rank
        })
      );
    });
  }

  private _clear(): void {
    this._items.forEach(item => item.dispose());
    this._items = [];
  }

  private readonly _palette: ICommandPalette;
  private readonly _model: EC2Model;
  private _items: IDisposable[] = [];
  private _key = '';
  private _isDisposed = false;
}
