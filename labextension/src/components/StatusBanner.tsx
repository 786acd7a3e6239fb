/**
 * What the panel shows while loading, or when the server cannot help.
 */
import * as React from 'react';

import { IModelError, LoadStatus } from '../model';
import { ENABLE_HINT } from '../tokens';

/** Properties of a {@link StatusBanner}. */
export interface IStatusBannerProps {
  status: LoadStatus;
  error: IModelError | null;
}

/** A loading line, an error box, or nothing when all is well. */
export function StatusBanner(props: IStatusBannerProps): JSX.Element | null {
  const { status, error } = props;
  if (error !== null) {
    return (
      <div
        className="jp-ec2-banner jp-ec2-banner-error"
        role="alert"
        data-testid="ec2-error"
      >
        {error.serverExtensionMissing ? (
          <>
            <p>The jupyter_ec2 server extension is not enabled.</p>
            <p>
              Enable it with <code>{ENABLE_HINT}</code>, then restart
              JupyterLab. If it is enabled, it failed to start: the Jupyter
              server&apos;s log says why.
            </p>
          </>
        ) : (
          <p>{error.message}</p>
        )}
      </div>
    );
  }
  if (status === 'loading') {
    return (
      <div className="jp-ec2-banner" role="status" data-testid="ec2-loading">
        Loading launch profiles…
      </div>
    );
  }
  return null;
}
