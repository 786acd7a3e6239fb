/**
 * Palette items: one "Launch …" item per launch profile, kept in step with the server.
 */
import { ICommandPalette } from '@jupyterlab/apputils';

import { EC2Model } from './model';
import { ProfileItems } from './profileitems';
import { CATEGORY, CommandIDs } from './tokens';

/** The palette's "Launch <profile>" items, re-made whenever the profiles change. */
export function profilePaletteItems(
  palette: ICommandPalette,
  model: EC2Model
): ProfileItems {
  return new ProfileItems(model, (profile, rank) =>
    palette.addItem({
      command: CommandIDs.launchProfile,
      // `isPalette` makes the label read "Launch …" (a JupyterLab convention).
      args: { profile: profile.name, isPalette: true },
      category: CATEGORY,
      rank
    })
  );
}
