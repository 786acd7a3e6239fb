/**
 * One launcher tile per launch profile, in the server's order.
 */
import { ILauncher } from '@jupyterlab/launcher';

import { EC2Model } from './model';
import { ProfileItems } from './profileitems';
import { CATEGORY, CommandIDs } from './tokens';

/** The launcher tiles of the profiles, re-made whenever the profiles change. */
export function profileTiles(
  launcher: ILauncher,
  model: EC2Model
): ProfileItems {
  return new ProfileItems(model, (profile, rank) =>
    launcher.add({
      command: CommandIDs.launchProfile,
      args: { profile: profile.name },
      category: CATEGORY,
      rank
    })
  );
}
