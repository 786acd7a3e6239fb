/**
 * The one helper that talks to the jupyter_ec2 REST API.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { API_NAMESPACE, ENABLE_HINT, IErrorReply } from './tokens';

/** An error answered by the REST API (or the lack of it), ready to show to a user. */
export class APIError extends Error {
  constructor(
    message: string,
    options: {
      status: number;
      field?: string;
      code?: string;
      serverExtensionMissing?: boolean;
    }
  ) {
    super(message);
    this.name = 'APIError';
    this.status = options.status;
    this.field = options.field ?? null;
    this.code = options.code ?? null;
    this.serverExtensionMissing = options.serverExtensionMissing ?? false;
  }

  /** The HTTP status; 0 when the server could not be reached. */
  readonly status: number;
  /** The request field the server refused, if any. */
  readonly field: string | null;
  /** The AWS error code, if any. */
  readonly code: string | null;
  /** True when the server answered, but not as jupyter_ec2: the server extension is off. */
  readonly serverExtensionMissing: boolean;
}

/** The message shown when the server has no jupyter_ec2 API (short enough for a toast). */
export const SERVER_EXTENSION_MISSING =
  'The jupyter_ec2 server extension is not enabled. ' +
  `Run ${ENABLE_HINT} and restart JupyterLab.`;

/**
 * Call the REST API and return its JSON answer.
 *
 * @param endpoint - path below `{base_url}jupyter-ec2/api/`, e.g. `profiles`
 * @param init - fetch options (method, body…)
 * @param serverSettings - the server connection settings of the application
 * @throws APIError carrying the server's `message` (and `field`) on any failure
 */
export async function requestAPI<T>(
  endpoint: string,
  init: RequestInit = {},
  serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(serverSettings.baseUrl, API_NAMESPACE, endpoint);

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, serverSettings);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new APIError(`Could not reach the Jupyter server: ${reason}`, {
      status: 0
    });
  }

  const text = await response.text();
  const body = parseJSON(text);

  if (!response.ok) {
    const reply = asErrorReply(body);
    if (reply === null && response.status === 404) {
      // Jupyter's own 404 page (HTML): no handler is mounted under the namespace.
      throw new APIError(SERVER_EXTENSION_MISSING, {
        status: 404,
        serverExtensionMissing: true
      });
    }
    const message =
      reply?.message ||
      `${response.status} ${response.statusText || 'error'} from ${endpoint}`;
    throw new APIError(message, {
      status: response.status,
      field: reply?.field,
      code: reply?.code
    });
  }

  if (body === undefined) {
    throw new APIError(`The server did not answer JSON for ${endpoint}.`, {
      status: response.status
    });
  }
  return body as T;
}

/** The JSON value of `text`, `null` for an empty body, `undefined` if not JSON. */
function parseJSON(text: string): unknown {
  if (text.length === 0) {
    return null;
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** `body` as an error reply when it has a string `message`, else `null`. */
function asErrorReply(body: unknown): IErrorReply | null {
  if (typeof body !== 'object' || body === null) {
    return null;
  }
  const { message, field, code } = body as Record<string, unknown>;
  if (typeof message !== 'string') {
    return null;
  }
  return {
    message,
    field: typeof field === 'string' ? field : undefined,
    code: typeof code === 'string' ? code : undefined
  };
}
