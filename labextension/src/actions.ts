/**
 * What the commands do for the user beyond one REST call: feedback, confirmation, new tabs.
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { PageConfig } from '@jupyterlab/coreutils';
import * as React from 'react';

import { CredentialsHelp } from './components/CredentialsHelp';
import { absoluteURL, isCredentialsProblem } from './instances';
import { APIError } from './request';
import { IInstance } from './tokens';

/** A short, toast-sized sentence for an error (notifications cut at 140 characters). */
export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Whether `error` is AWS refusing to work for lack of credentials. */
export function isCredentialsError(error: unknown): boolean {
  return (
    error instanceof APIError &&
    error.status >= 500 &&
    isCredentialsProblem(error.message, error.code)
  );
}

/** A dialog that says how to configure AWS credentials. */
export async function showCredentialsHelp(message?: string): Promise<void> {
  await showDialog({
    title: 'AWS credentials are not configured',
    body: React.createElement(CredentialsHelp, { message }),
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
}

/** Notification options that turn an error into advice where there is some. */
export function errorNotice(
  what: string,
  error: unknown
): { message: string; actions: Notification.IAction[] } {
  if (isCredentialsError(error)) {
    return {
      message: `${what}: AWS credentials are not configured.`,
      actions: [
        {
          label: 'What to do',
          displayType: 'accent',
          callback: () => void showCredentialsHelp(errorText(error))
        }
      ]
    };
  }
  return { message: `${what}: ${errorText(error)}`, actions: [] };
}

/** Tell the user an action failed, with advice when the reason is known. */
export function notifyError(what: string, error: unknown): string {
  const { message, actions } = errorNotice(what, error);
  return Notification.error(message, { autoClose: false, actions });
}

/**
 * Open an instance's notebook in a new browser tab.
 *
 * The new tab gets no handle on this one (`opener` is cut before it navigates).
 *
 * @returns false when there is no URL yet or the browser blocked the new tab
 */
export function openInNewTab(instance: IInstance): boolean {
  if (!instance.url) {
    return false;
  }
  const target = absoluteURL(instance.url, PageConfig.getBaseUrl());
  const win = window.open('', '_blank');
  if (win === null) {
    return false;
  }
  win.opener = null;
  win.location.href = target;
  return true;
}

/**
 * Whether the instance's notebook is served on this server's own origin
 * (`remote_origin = "same"`): a page it serves then runs with the local session.
 */
export function servedOnLocalOrigin(instance: IInstance): boolean {
  if (!instance.url) {
    return false;
  }
  const target = new URL(absoluteURL(instance.url, PageConfig.getBaseUrl()));
  return target.origin === window.location.origin;
}

const TRUST_ACKNOWLEDGED = 'jupyter-ec2:same-origin-acknowledged';

/** Whether the user accepted, in this browser session, the trust "same" mode needs. */
export function sameOriginAcknowledged(): boolean {
  return window.sessionStorage.getItem(TRUST_ACKNOWLEDGED) === 'yes';
}

/**
 * Open an instance's notebook; in "same" mode first say, once per browser session, what
 * that trusts the instance with.
 *
 * @returns false when the user declined, there is no URL yet or the browser blocked the tab
 */
export async function openInstance(instance: IInstance): Promise<boolean> {
  if (servedOnLocalOrigin(instance) && !sameOriginAcknowledged()) {
    const body = React.createElement(
      'div',
      { className: 'jp-ec2-confirm', 'data-testid': 'ec2-open-trust' },
      React.createElement(
        'p',
        null,
        `${instance.name} is served on this JupyterLab's own address ` +
          '(remote_origin = "same"). Anything running on the instance that serves a ' +
          'page there — a notebook output, a package, a remote lab extension — can act ' +
          'with your local session: read and write your local files and run code on ' +
          'this machine.'
      ),
      React.createElement(
        'p',
        null,
        'Open it only if you trust everything installed on the instance. Where the ' +
          'server listens on this machine, remote_origin = "auto" gives each instance an ' +
          "origin of its own; behind JupyterHub, use JupyterHub's subdomain setup " +
          '(see docs/security.md).'
      )
    );
    const result = await showDialog({
      title: 'Open with your local session?',
      body,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Open' })],
      defaultButton: 0
    });
    if (!result.button.accept) {
      return false;
    }
    window.sessionStorage.setItem(TRUST_ACKNOWLEDGED, 'yes');
  }
  return openInNewTab(instance);
}

/** Ask before terminating: the disk and everything on it is lost. */
export async function confirmTerminate(instance: IInstance): Promise<boolean> {
  const body = React.createElement(
    'div',
    { className: 'jp-ec2-confirm', 'data-testid': 'ec2-terminate-confirm' },
    React.createElement(
      'p',
      null,
      `Terminate ${instance.name} (${instance.id}, ${instance.instance_type} in ${instance.region})?`
    ),
    React.createElement(
      'p',
      null,
      'Its disk and everything on it is lost: notebooks, data and installed ' +
        'packages that you have not copied elsewhere. This cannot be undone.'
    ),
    React.createElement(
      'p',
      null,
      'To pause without losing anything, Stop it instead.'
    )
  );
  const result = await showDialog({
    title: 'Terminate the instance?',
    body,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Terminate' })],
    defaultButton: 0
  });
  return result.button.accept;
}
