/**
 * What to do when AWS credentials are not configured.
 */
import * as React from 'react';

/** Properties of a {@link CredentialsHelp}. */
export interface ICredentialsHelpProps {
  /** What the server said, shown first when given. */
  message?: string | null;
}

/** The ways to give the Jupyter server AWS credentials, in the order most people need them. */
export function CredentialsHelp(props: ICredentialsHelpProps): JSX.Element {
  return (
    <div className="jp-ec2-credentials" data-testid="ec2-credentials-help">
      {props.message && (
        <p className="jp-ec2-credentials-said">{props.message}</p>
      )}
      <p>
        jupyter-ec2 uses the standard AWS credential chain of the machine that
        runs this Jupyter server. Give it credentials in one of these ways:
      </p>
      <ul>
        <li>
          run <code>aws configure</code> (or <code>aws sso login</code> for IAM
          Identity Center) as the user running Jupyter;
        </li>
        <li>
          or export <code>AWS_ACCESS_KEY_ID</code> and{' '}
          <code>AWS_SECRET_ACCESS_KEY</code> (and <code>AWS_SESSION_TOKEN</code>{' '}
          for temporary keys) before starting JupyterLab;
        </li>
        <li>
          or name a profile of <code>~/.aws/config</code> with{' '}
          <code>c.EC2Backend.aws_profile = &quot;name&quot;</code> in{' '}
          <code>jupyter_server_config.py</code> (or set <code>AWS_PROFILE</code>
          ).
        </li>
      </ul>
      <p>
        Then try again; a change of environment variables or server config needs
        a restart of JupyterLab.
      </p>
    </div>
  );
}
