/**
 * Keeps one launcher tile per launch profile, in the server's order.
 */
import { ILauncher } from '@jupyterlab/launcher';
import { IDisposable } from '@lumino/disposable';

import { EC2Model } from './model';
import { CATEGORY, CommandIDs } from './tokens';

/** The launcher tiles of the profiles, re-made whenever the profiles change. */
export class ProfileTiles implements IDisposable {
  constructor(launcher: ILauncher, model: EC2Model) {
    this._launcher = launcher;
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
    // Tiles read their label from the command when rendered: re-add them on any change
    // of names, labels or order so the launcher renders them again.
    const key = JSON.stringify(
      this._model.profiles.map(profile => [profile.name, profile.display_name])
    );
    if (key === this._key) {
      return;
    }
    this._key = key;
    this._clear();
    this._model.profiles.forEach((profile, rank) => {
      this._tiles.push(
        this._launcher.add({
          command: CommandIDs.launchProfile,
          args: { profile: profile.name },
          category: CATEGORY,
          rank
        })
      );
    });
  }

  private _clear(): void {
    this._tiles.forEach(tile => tile.dispose());
    this._tiles = [];
  }

  private readonly _launcher: ILauncher;
  private readonly _model: EC2Model;
  private _tiles: IDisposable[] = [];
  private _key = '';
  private _isDisposed = false;
}
