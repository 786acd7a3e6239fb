/**
 * One item per launch profile (a launcher tile, a palette entry), kept in step with the server.
 */
import { IDisposable } from '@lumino/disposable';

import { EC2Model } from './model';
import { IProfile } from './tokens';

/** Adds the item of one profile at a rank; the returned disposable removes it. */
export type AddProfileItem = (profile: IProfile, rank: number) => IDisposable;

/** Items of every profile, re-made whenever the profiles' names, labels or order change. */
export class ProfileItems implements IDisposable {
  constructor(model: EC2Model, add: AddProfileItem) {
    this._model = model;
    this._add = add;
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
    // Launcher tiles and palette items read their label from the command when rendered:
    // re-add them on any change of names, labels or order so they render again.
    const key = JSON.stringify(
      this._model.profiles.map(profile => [profile.name, profile.display_name])
    );
    if (key === this._key) {
      return;
    }
    this._key = key;
    this._clear();
    this._items = this._model.profiles.map((profile, rank) =>
      this._add(profile, rank)
    );
  }

  private _clear(): void {
    this._items.forEach(item => item.dispose());
    this._items = [];
  }

  private readonly _model: EC2Model;
  private readonly _add: AddProfileItem;
  private _items: IDisposable[] = [];
  private _key = '';
  private _isDisposed = false;
}
