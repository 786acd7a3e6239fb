/**
 * The "Check setup" banner: the preflight checks that failed, each with its fix.
 *
 * Shown only when something is wrong (or the checks could not be fetched); a passing setup
 * shows nothing but keeps a "Check again" affordance in the palette command.
 */
import * as React from 'react';

import { PreflightModel, statusOf } from '../preflight';

/** Properties of a {@link PreflightBanner}. */
export interface IPreflightBannerProps {
  preflight: PreflightModel;
  /** Run the checks again. */
  onCheck: () => void;
}

/** The failing checks with their fixes, or nothing when every check passed. */
export function PreflightBanner(
  props: IPreflightBannerProps
): JSX.Element | null {
  const { preflight, onCheck } = props;
  const reply = preflight.reply;
  const failing = preflight.failing;
  if (reply === null || failing.length === 0) {
    return null;
  }
  const skipped = reply.checks.filter(check => statusOf(check) === 'skip');
  return (
    <div
      className="jp-ec2-banner jp-ec2-banner-error jp-ec2-preflight"
      role="alert"
      data-testid="ec2-preflight"
    >
      <p>
        <strong>
          Your AWS setup needs attention before a launch can succeed.
        </strong>
      </p>
      <ul className="jp-ec2-preflight-checks">
        {failing.map(check => (
          <li
            key={check.name}
            className="jp-ec2-preflight-check"
            data-check={check.name}
          >
            <span className="jp-ec2-preflight-name">{check.name}</span>{' '}
            <span className="jp-ec2-preflight-message">{check.message}</span>
            {check.fix && (
              <p className="jp-ec2-preflight-fix" data-fix-for={check.name}>
                <strong>Fix:</strong> {check.fix}
              </p>
            )}
          </li>
        ))}
      </ul>
      {skipped.length > 0 && (
        <p className="jp-ec2-preflight-skipped">
          Not checked until then: {skipped.map(check => check.name).join(', ')}.
        </p>
      )}
      <div className="jp-ec2-form-actions">
        <button
          type="button"
          className="jp-Button jp-mod-styled"
          data-action="check-setup"
          disabled={preflight.running}
          onClick={onCheck}
        >
          {preflight.running ? 'Checking…' : 'Check again'}
        </button>
      </div>
    </div>
  );
}
