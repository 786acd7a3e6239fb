"""The remote notebook through the local server: ``{base_url}jupyter-ec2/remote/{id}/…``.

HTTP and websockets are relayed to the instance's forwarded port (see :mod:`jupyter_ec2.tunnel`)
by :class:`RemoteProxyHandler`, a jupyter_server handler that serves HTTP and websockets on one
URL, shaped after jupyter-server-proxy's ``ProxyHandler`` (``docs/proxy.md`` says why it is not
a subclass of it). The local server authenticates the user; the proxy adds the remote server's
token itself, so the browser never sees it. Against a naive proxy:

1. the local XSRF check is enforced (a token-authenticated request is exempt on the remote);
2. the remote token is removed from HTML responses (JupyterLab's page config embeds the token
   the page was reached with) and from every response header;
3. ``Set-Cookie`` from the remote is dropped, and ``Cookie`` and XSRF headers are not forwarded
   (the remote's login and ``_xsrf`` cookies would clash with the local ones);
4. a local ``?token=`` is removed from the forwarded query (the remote prefers it to the header);
5. the raw request path is forwarded (file names with ``#`` or ``?`` stay encoded);
6. websocket messages up to :data:`DEFAULT_WS_MAX_PENDING` pass (tornado's limit is 10 MiB);
7. responses are streamed with back-pressure (flat memory for a 1 GB download), over upstream
   connections kept alive in a small pool (no new SSH channel per request);
8. the upstream ``Host`` and ``Origin`` are the forward's own; ``Referer`` is never forwarded
   (it may carry the local token or local paths);
9. nothing is unbounded: HTML that arrives compressed (we ask for identity) is refused rather
   than inflated, websocket messages are relayed with back-pressure both ways and a cap on
   pending bytes, and upstream connect / first-byte / idle timeouts answer 504
   (:class:`ProxyLimits`);
10. the remote's CORS headers are dropped, a ``Location`` outside the instance's path is
    refused, and a kept-alive upstream connection that holds bytes past the end of a response
    is closed, never reused.

Two handlers share the relay (:class:`RelayHandler`): :class:`RemoteProxyHandler` on the local
origin (``remote_origin = "same"``, authenticated by the local server), and
``jupyter_ec2.origin.InstanceProxyHandler`` on an instance's own origin (``"separate"``).

The handler finds the forward per request through ``settings["jupyter_ec2_remote_lookup"]``,
a callable ``(instance_id) -> RemoteEndpoint | None``, so a forward that moves to another port
or reconnects needs no change to the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, unquote_plus, urljoin, urlsplit, urlunsplit

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import httpclient, httputil, iostream, web, websocket
from tornado.http1connection import (
    HTTP1Connection,
    HTTP1ConnectionParameters,
    is_transfer_encoding_chunked,
)
from tornado.httpclient import HTTPRequest
from tornado.log import app_log
from tornado.simple_httpclient import HTTPTimeoutError
from tornado.tcpclient import TCPClient

# The remote server's base_url is the whole proxied path, so the path is forwarded unchanged.
from .provision.params import WEBSOCKET_MAX_MESSAGE_SIZE, remote_base_url  # noqa: F401

LOOKUP_SETTING = "jupyter_ec2_remote_lookup"
"""Tornado setting holding ``(instance_id) -> RemoteEndpoint | None``."""

LIMITS_SETTING = "jupyter_ec2_proxy_limits"
"""Tornado setting holding the :class:`ProxyLimits` (defaults when absent)."""

DEFAULT_WS_MAX_PENDING = 64 * 1024 * 1024
"""Bytes of websocket messages that may wait for one side before the relay closes (1009)."""

ROUTE_PREFIX = "jupyter-ec2/remote"
"""Where remote notebooks live, under the local server's ``base_url``."""

_UPSTREAM_CHUNK = 1024 * 1024
_MAX_PENDING_WRITE = 4 * 1024 * 1024
_REWRITE_FLUSH = 1024 * 1024
_WS_WINDOW = 1024 * 1024
"""Websocket bytes written ahead to one side before the relay waits for them to drain."""


@dataclass(frozen=True)
class ProxyLimits:
    """Bounds on what one proxied request may hold: timeouts (seconds) and websocket bytes.

    ``connect_timeout``: opening the upstream connection; ``first_byte_timeout``: from the
    request sent to the response's headers; ``idle_timeout``: between two pieces of a response
    body. Each answers 504 to the browser (or ends a response already started).
    ``ws_max_pending``: bytes of websocket messages waiting for one side; a message that would
    go beyond it closes both ends with 1009.
    """

    connect_timeout: float = 10.0
    first_byte_timeout: float = 300.0
    idle_timeout: float = 300.0
    ws_max_pending: int = DEFAULT_WS_MAX_PENDING


def proxy_limits(settings: dict) -> ProxyLimits:
    """The limits configured in ``settings`` (defaults when none are)."""
    limits = settings.get(LIMITS_SETTING)
    return limits if isinstance(limits, ProxyLimits) else ProxyLimits()


# Request headers never forwarded: hop-by-hop ones, and what belongs to the local server
# (its cookies, its XSRF token, its credentials) or is replaced by the proxy.
_DROP_REQUEST_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Cookie",
        "Authorization",
        "X-XSRFToken",
        "X-CSRFToken",
        "Accept-Encoding",
        "Content-Length",
        "Origin",
        "Referer",
        "Forwarded",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Real-Ip",
        "Expect",
    )
)
# ... and, for a websocket handshake, what the websocket client writes itself.
_DROP_WS_HEADERS = _DROP_REQUEST_HEADERS | {
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
}
# Response headers never passed back.
_DROP_RESPONSE_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Set-Cookie",
        "Set-Cookie2",
        "Content-Length",
        # The remote must never widen who may read it: CORS is the local server's business.
        "Access-Control-Allow-Origin",
        "Access-Control-Allow-Credentials",
        "Access-Control-Allow-Headers",
        "Access-Control-Allow-Methods",
        "Access-Control-Expose-Headers",
        "Access-Control-Max-Age",
        "Access-Control-Allow-Private-Network",
        "Timing-Allow-Origin",
    )
)
_REWRITE_TYPES = ("text/html", "application/xhtml+xml")


@dataclass(frozen=True)
class RemoteEndpoint:
    """Where a remote notebook is reachable now: the forward's local port and the remote token.

    ``state`` is the forward's state (``up``, ``reconnecting``, ``down``): anything but ``up``
    answers 503. ``tls`` connects with TLS (the SSH channel already authenticates the host and
    encrypts, so the remote's self-signed certificate is not verified).
    """

    local_port: int
    token: str
    tls: bool = False
    state: str = "up"


def remote_handlers(base_url: str = "/") -> list[tuple[str, type, dict]]:
    """The routes to add to the local server's web app (``web_app.add_handlers``)."""
    prefix = url_path_join(base_url, ROUTE_PREFIX)
    return [
        # All groups unnamed: tornado drops unnamed groups when any group is named.
        (prefix + r"/([^/]+)", RemoteRedirectHandler, {}),
        (prefix + r"/([^/]+)/(.*)", RemoteProxyHandler, {}),
    ]


_LOCAL_QUERY_PARAMS = frozenset(("token", "_xsrf"))


def strip_token_param(query: str) -> str:
    """The query without ``token=`` (and ``_xsrf=``) parameters, every other byte as sent."""
    if not query:
        return query
    kept = [
        part
        for part in query.split("&")
        if unquote_plus(part.split("=", 1)[0]) not in _LOCAL_QUERY_PARAMS
    ]
    return "&".join(kept)


def scrub_uri(uri: str) -> str:
    """``uri`` with every query parameter that may hold a credential removed, for logs."""
    path, sep, query = uri.partition("?")
    query = strip_token_param(query)
    return path + ("?" + query if sep and query else "")


class _TokenScrubber:
    """Removes every occurrence of a secret from a byte stream split into arbitrary chunks."""

    def __init__(self, secret: bytes):
        self.secret = secret
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """Scrubbed output for ``chunk``; keeps back what could start a split secret."""
        data = (self._tail + chunk).replace(self.secret, b"")
        keep = len(self.secret) - 1
        # Hold back the longest suffix that is a prefix of the secret.
        for size in range(min(keep, len(data)), 0, -1):
            if self.secret.startswith(data[-size:]):
                self._tail = data[-size:]
                return data[:-size]
        self._tail = b""
        return data

    def flush(self) -> bytes:
        """What is left at the end of the stream."""
        tail, self._tail = self._tail, b""
        return tail


# -- upstream connections ---------------------------------------------------------------------


class _Upstream:
    """One kept-alive HTTP/1.1 connection to a forward."""

    def __init__(self, key: tuple[int, bool], stream: iostream.IOStream):
        self.key = key
        self.stream = stream
        self.idle_since = time.monotonic()


class UpstreamPool:
    """Idle HTTP/1.1 connections to forwards, reused across requests (keep-alive).

    A new connection through a forward is a new SSH channel; reusing one saves that round
    trip. Idle connections are dropped after ``idle_timeout`` and whenever they close.
    """

    def __init__(self, max_idle_per_port: int = 8, idle_timeout: float = 20.0):
        self.max_idle_per_port = max_idle_per_port
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[int, bool], list[_Upstream]] = {}
        self._client = TCPClient()

    async def acquire(
        self, port: int, tls: bool, connect_timeout: float | None = None
    ) -> tuple[_Upstream, bool]:
        """An open connection to ``127.0.0.1:port``: (connection, whether it was reused).

        Raises ``TimeoutError`` when a new connection takes longer than ``connect_timeout``.
        """
        key = (port, tls)
        idle = self._idle.get(key, [])
        now = time.monotonic()
        while idle:
            upstream = idle.pop()
            if (
                upstream.stream.closed()
                or now - upstream.idle_since > self.idle_timeout
                or _holds_unread_bytes(upstream.stream)
            ):
                # Bytes that arrived while idle belong to no request: never let them be read
                # as the next response.
                upstream.stream.close()
                continue
            upstream.stream.set_close_callback(None)
            return upstream, True
        timeout = None if connect_timeout is None else time.monotonic() + connect_timeout
        stream = await self._client.connect(
            "127.0.0.1",
            port,
            ssl_options=_client_ssl_context() if tls else None,
            timeout=timeout,
        )
        stream.set_nodelay(True)
        # Bigger reads than tornado's 64 KiB: a large download costs fewer trips through the
        # event loop (the body is relayed chunk by chunk, never held whole).
        stream.read_chunk_size = _UPSTREAM_CHUNK
        return _Upstream(key, stream), False

    def release(self, upstream: _Upstream) -> None:
        """Return a connection whose last response was read completely."""
        stream = upstream.stream
        if stream.closed():
            return
        if _holds_unread_bytes(stream):
            # More bytes than the response's framing announced: the connection is out of step.
            stream.close()
            return
        idle = self._idle.setdefault(upstream.key, [])
        if len(idle) >= self.max_idle_per_port:
            stream.close()
            return
        upstream.idle_since = time.monotonic()

        def on_close(upstream: _Upstream = upstream) -> None:
            with contextlib.suppress(ValueError):
                self._idle.get(upstream.key, []).remove(upstream)

        # A close callback makes the stream watch for the peer closing while idle.
        stream.set_close_callback(on_close)
        idle.append(upstream)

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for upstream in idle:
                upstream.stream.close()
        self._idle.clear()


def _holds_unread_bytes(stream: iostream.IOStream) -> bool:
    """Whether bytes (or an end of stream) wait on a connection no response is reading."""
    if getattr(stream, "_read_buffer_size", 0):
        return True
    sock = getattr(stream, "socket", None)
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket):
        if sock.pending():
            return True
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)
    try:
        peeked = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except ssl.SSLWantReadError:
        return False
    except (OSError, ValueError):
        return True
    # b"" is the peer's end of stream; anything else is data no request asked for.
    del peeked
    return True


def _client_ssl_context() -> ssl.SSLContext:
    # The SSH forward already authenticates the host and encrypts; the remote certificate is
    # self-signed and not pinned, so it is not verified.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def close_upstream_pool(settings: dict) -> None:
    """Close the idle upstream connections kept in ``settings`` (at server shutdown)."""
    pool = settings.pop("jupyter_ec2_upstream_pool", None)
    if pool is not None:
        pool.close()


def _pool(settings: dict) -> UpstreamPool:
    pool = settings.get("jupyter_ec2_upstream_pool")
    if pool is None:
        pool = settings["jupyter_ec2_upstream_pool"] = UpstreamPool()
    return pool


class _UpstreamClosed(Exception):
    """The upstream connection closed before any byte of the response arrived."""


class _ResponseRelay(httputil.HTTPMessageDelegate):
    """Receives the upstream response and streams it to the browser."""

    def __init__(self, handler: RelayHandler, upstream: _Upstream, token: bytes):
        self.handler = handler
        self.upstream = upstream
        self.token = token
        self.started = False
        self.reusable = False
        self.refused: str | None = None
        self.last_activity = time.monotonic()
        self.scrubber: _TokenScrubber | None = None
        self._pending: asyncio.Future | None = None
        self._buffered = 0
        self._unflushed = 0

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        handler = self.handler
        self.last_activity = time.monotonic()
        content_type = headers.get("Content-Type", "").lower()
        rewrite = content_type.startswith(_REWRITE_TYPES)
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if rewrite and encoding not in ("identity", ""):
            # We asked for identity. Inflating would put an unbounded amount of memory at the
            # remote's command (a gzip bomb), so compressed HTML is refused, not decoded.
            self.refused = (
                "The remote notebook server sent compressed HTML although identity was asked "
                "for; refused."
            )
        location = headers.get("Location")
        if location is not None and self.refused is None:
            rewritten = handler.rewrite_location(location)
            if rewritten is None:
                self.refused = (
                    "The remote notebook server redirected outside this instance's notebook; "
                    "refused."
                )
            else:
                headers["Location"] = rewritten
        if self.refused is not None:
            handler.proxy_log.warning("jupyter-ec2 proxy: %s", self.refused)
            self.upstream.stream.close()
            return
        self.started = True
        self.reusable = start_line.version == "HTTP/1.1" and (
            headers.get("Connection", "").lower() != "close"
            and (
                "Content-Length" in headers
                or is_transfer_encoding_chunked(headers)
                or start_line.code in (204, 304)
                or handler.request.method == "HEAD"
            )
        )
        handler.set_status(start_line.code, start_line.reason)
        handler.clear_all_headers()
        if rewrite:
            self.scrubber = _TokenScrubber(self.token)
        token_text = self.token.decode()
        for name, value in headers.get_all():
            lower = name.lower()
            if lower in _DROP_RESPONSE_HEADERS and not (lower == "content-length" and not rewrite):
                continue
            if rewrite and lower in ("content-encoding", "etag", "content-md5"):
                continue
            if token_text in value:
                value = value.replace(token_text, "")
            handler.add_header(name, value)

    async def data_received(self, chunk: bytes) -> None:
        handler = self.handler
        self.last_activity = time.monotonic()
        if not self.started:
            return  # refused: nothing of it goes to the browser
        if handler.request.connection.stream.closed():
            # The browser went away: stop reading (the read then fails quietly).
            self.upstream.stream.close()
            return
        if self.scrubber is not None:
            chunk = self.scrubber.feed(chunk)
            self._buffered += len(chunk)
            if chunk:
                handler.write(chunk)
            # Small pages (the common case) go out whole, with a Content-Length.
            if self._buffered < _REWRITE_FLUSH:
                return
            self._buffered = 0
        else:
            handler.write(chunk)
        self._unflushed += len(chunk)
        pending = self._pending
        if pending is not None:
            if not pending.done() and self._unflushed < _MAX_PENDING_WRITE:
                # One flush at a time (tornado resolves only the latest flush future): keep
                # reading upstream while it drains, up to a bound that keeps memory flat.
                return
            try:
                await pending
            except iostream.StreamClosedError:
                self.upstream.stream.close()
                return
        self._pending = handler.flush_future()
        self._unflushed = 0

    def finish(self) -> None:
        if self.started and self.scrubber is not None:
            tail = self.scrubber.flush()
            if tail:
                self.handler.write(tail)

    async def drain(self) -> None:
        """Wait for the last write to the browser."""
        if self._pending is not None:
            with contextlib.suppress(iostream.StreamClosedError):
                await self._pending

    def on_connection_close(self) -> None:
        self.reusable = False


# -- handlers ---------------------------------------------------------------------------------


class _Timeout(Exception):
    """The remote took longer than a :class:`ProxyLimits` timeout."""


class _RelayClientProtocol(websocket.WebSocketProtocol13):
    """Tornado's client protocol, noting when it closes because a message is too big."""

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if code == 1009:
            self.handler.too_big = True  # type: ignore[attr-defined]
        super().close(code, reason)


class _RelayClient(websocket.WebSocketClientConnection):
    """The upstream websocket: tells a message over the cap from a dropped connection."""

    too_big = False

    def get_websocket_protocol(self) -> websocket.WebSocketProtocol:
        return _RelayClientProtocol(self, mask_outgoing=True, params=self.params)


def _connect_upstream_ws(
    request: HTTPRequest, max_message_size: int, subprotocols: list[str] | None
) -> Awaitable[_RelayClient]:
    """``tornado.websocket.websocket_connect`` with :class:`_RelayClient`."""
    request.headers = httputil.HTTPHeaders(request.headers)
    proxied = httpclient._RequestProxy(request, HTTPRequest._DEFAULTS)  # noqa: SLF001
    conn = _RelayClient(
        proxied,  # type: ignore[arg-type]
        max_message_size=max_message_size,
        subprotocols=subprotocols,
    )
    return conn.connect_future  # type: ignore[return-value]


class RelayHandler(websocket.WebSocketHandler):
    """The relay to one instance's remote server, HTTP and websockets, without authentication.

    A websocket handler that also answers plain HTTP (tornado 6 disables the HTTP methods of
    a websocket handler only once the connection is upgraded), as jupyter-server-proxy's
    ``ProxyHandler`` does; see ``docs/proxy.md`` for why it is not a subclass of it.
    Subclasses decide who may use it: :class:`RemoteProxyHandler` (the local session) and
    ``jupyter_ec2.origin.InstanceProxyHandler`` (a credential of the instance's own origin).
    """

    _endpoint: RemoteEndpoint
    _instance_id: str = ""
    _upstream_ws: websocket.WebSocketClientConnection | None = None
    _current_upstream: _Upstream | None = None
    _ws_pump: asyncio.Task | None = None

    @property
    def proxy_log(self) -> logging.Logger:
        """The server's log (jupyter's when the handler is a JupyterHandler)."""
        return getattr(self, "log", None) or app_log

    def _request_summary(self) -> str:
        # Tornado's warning for an HTTP error names the URI: never with a credential in it.
        return (
            f"{self.request.method} {scrub_uri(self.request.uri or '')} ({self.request.remote_ip})"
        )

    def find_endpoint(self, instance_id: str) -> None:
        """Look the instance's forward up: 404 unknown, 503 not up."""
        lookup: Callable[[str], RemoteEndpoint | None] | None = self.settings.get(LOOKUP_SETTING)
        key = instance_id
        dashboard = url_path_join(remote_base_url(self.settings.get("base_url", "/"), key), "dask")
        if self.request.path == dashboard or self.request.path.startswith(dashboard + "/"):
            key = instance_id + "/dask"  # the Dask dashboard's own forward (docs/dask.md)
        endpoint = lookup(key) if lookup is not None else None
        if endpoint is None:
            raise web.HTTPError(404, f"No remote notebook for instance {instance_id!r}.")
        if endpoint.state != "up":
            raise web.HTTPError(
                503, f"The forward to {instance_id} is {endpoint.state}; retry in a moment."
            )
        self._instance_id = instance_id
        self._endpoint = endpoint

    @property
    def instance_prefix(self) -> str:
        """The instance's path: ``{base_url}jupyter-ec2/remote/{id}/``."""
        return remote_base_url(self.settings.get("base_url", "/"), self._instance_id)

    def _record_activity(self) -> None:
        """Proxied traffic is activity, for the local server's idle culling."""
        self.settings.setdefault("last_activity_times", {})["jupyter_ec2"] = datetime.now(
            timezone.utc
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors of the proxy itself as JSON ``{"message": …}``."""
        self.clear_all_headers()
        self.set_header("Content-Type", "application/json")
        if status_code == 503:
            self.set_header("Retry-After", "2")
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        self.finish(json.dumps({"message": reason}))

    def compute_etag(self) -> str | None:
        """No local ETag: the remote's caching headers pass through untouched."""
        return None

    def clear_all_headers(self) -> None:
        """Forget every header set so far (the local defaults must not mix with the remote's)."""
        self._headers = httputil.HTTPHeaders()

    def flush_future(self) -> asyncio.Future:
        """``RequestHandler.flush``: a future that resolves once the data is written."""
        return self.flush()

    @property
    def max_message_size(self) -> int:  # type: ignore[override]
        """The largest websocket message accepted from the browser (tornado closes with 1009)."""
        return proxy_limits(self.settings).ws_max_pending

    def rewrite_location(self, location: str) -> str | None:
        """A remote ``Location`` as a path on this origin, or None when it leaves the instance."""
        if "\\" in location or any(ord(c) < 0x21 for c in location):
            return None  # browsers read "/\\host" as "//host"
        parts = urlsplit(location)
        absolute = parts.scheme or parts.netloc
        if absolute and f"{parts.scheme}://{parts.netloc}".lower() != self._upstream_origin():
            return None
        resolved = urlsplit(urljoin(self.request.path, urlunsplit(("", "", *parts[2:]))))
        path = resolved.path
        segments = unquote(path).split("/")
        if ".." in segments or "." in segments:
            return None
        prefix = self.instance_prefix
        if not (path == prefix.rstrip("/") or path.startswith(prefix)):
            return None
        return urlunsplit(("", "", path, resolved.query, resolved.fragment))

    def on_connection_close(self) -> None:
        """The browser went away: close what this request holds upstream."""
        current, self._current_upstream = self._current_upstream, None
        if current is not None:
            current.stream.close()
        super().on_connection_close()

    # -- upstream request ---------------------------------------------------------------------

    def _upstream_origin(self) -> str:
        scheme = "https" if self._endpoint.tls else "http"
        return f"{scheme}://127.0.0.1:{self._endpoint.local_port}"

    def _upstream_target(self) -> str:
        """The raw path (never decoded and re-encoded) and the query without credentials."""
        query = strip_token_param(self.request.query)
        return self.request.path + ("?" + query if query else "")

    def _upstream_headers(self, drop: frozenset[str]) -> httputil.HTTPHeaders:
        headers = httputil.HTTPHeaders()
        for name, value in self.request.headers.get_all():
            if name.lower() not in drop:
                headers.add(name, value)
        endpoint = self._endpoint
        headers["Host"] = f"127.0.0.1:{endpoint.local_port}"
        headers["Authorization"] = f"token {endpoint.token}"
        if "Origin" in self.request.headers:
            headers["Origin"] = self._upstream_origin()
        return headers

    # -- HTTP ---------------------------------------------------------------------------------

    async def _proxy_http(self) -> None:
        """Relay this request to the remote server and stream its response back."""
        self._record_activity()
        limits = proxy_limits(self.settings)
        headers = self._upstream_headers(_DROP_REQUEST_HEADERS)
        headers["Accept-Encoding"] = "identity"
        body = self.request.body
        method = self.request.method or "GET"
        if body or method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        start_line = httputil.RequestStartLine(method, self._upstream_target(), "HTTP/1.1")
        pool = _pool(self.settings)
        for attempt in (1, 2):
            upstream, reused = await self._acquire(pool, limits)
            relay = _ResponseRelay(self, upstream, self._endpoint.token.encode())
            self._current_upstream = upstream
            try:
                await self._exchange(upstream, start_line, headers, body, relay, limits)
            except (iostream.StreamClosedError, _UpstreamClosed, _Timeout, OSError) as error:
                upstream.stream.close()
                self._current_upstream = None
                if relay.refused is not None:
                    raise web.HTTPError(502, relay.refused) from None
                if isinstance(error, _Timeout):
                    if relay.started:
                        self.request.connection.stream.close()
                        return
                    raise web.HTTPError(504, str(error)) from None
                if not relay.started and reused and attempt == 1:
                    continue  # a kept-alive connection that had closed: once more, afresh
                if not relay.started:
                    raise web.HTTPError(
                        502, "The remote notebook server closed the connection."
                    ) from error
                # Part of the response is out: all we can do is end it.
                self.request.connection.stream.close()
                return
            break
        self._current_upstream = None
        await relay.drain()
        if relay.reusable and not upstream.stream.closed():
            pool.release(upstream)
        else:
            upstream.stream.close()
        self._record_activity()

    async def _acquire(self, pool: UpstreamPool, limits: ProxyLimits) -> tuple[_Upstream, bool]:
        try:
            return await pool.acquire(
                self._endpoint.local_port, self._endpoint.tls, limits.connect_timeout
            )
        except (TimeoutError, asyncio.TimeoutError) as error:
            raise web.HTTPError(
                504,
                f"The forward did not accept a connection within {limits.connect_timeout:g} s.",
            ) from error
        except OSError as error:
            raise web.HTTPError(503, "The forward is reconnecting; retry in a moment.") from error

    async def _exchange(
        self,
        upstream: _Upstream,
        start_line: httputil.RequestStartLine,
        headers: httputil.HTTPHeaders,
        body: bytes,
        relay: _ResponseRelay,
        limits: ProxyLimits,
    ) -> None:
        params = HTTP1ConnectionParameters(
            chunk_size=_UPSTREAM_CHUNK,
            max_body_size=1 << 62,
            max_header_size=256 * 1024,
            decompress=False,
        )
        connection = HTTP1Connection(upstream.stream, True, params)
        loop = asyncio.get_running_loop()
        timed_out: list[str] = []
        relay.last_activity = time.monotonic()

        def watchdog() -> None:
            nonlocal timer
            limit, what = (
                (limits.idle_timeout, "sent nothing more")
                if relay.started
                else (limits.first_byte_timeout, "did not answer")
            )
            left = relay.last_activity + limit - time.monotonic()
            if left > 0:
                timer = loop.call_later(left, watchdog)
                return
            timed_out.append(f"The remote notebook server {what} within {limit:g} s.")
            upstream.stream.close()

        timer = loop.call_later(min(limits.first_byte_timeout, limits.idle_timeout), watchdog)
        try:
            await connection.write_headers(start_line, headers, body or None)
            connection.finish()
            keep_open = await connection.read_response(relay)
        except (iostream.StreamClosedError, OSError):
            if timed_out:
                raise _Timeout(timed_out[0]) from None
            raise
        finally:
            timer.cancel()
        if timed_out:
            raise _Timeout(timed_out[0])
        if relay.refused is not None or not relay.started:
            raise _UpstreamClosed()
        if not keep_open:
            relay.reusable = False

    async def post(self, *args: Any) -> None:
        """POST."""
        await self._proxy_http()

    async def put(self, *args: Any) -> None:
        """PUT."""
        await self._proxy_http()

    async def patch(self, *args: Any) -> None:
        """PATCH."""
        await self._proxy_http()

    async def delete(self, *args: Any) -> None:
        """DELETE."""
        await self._proxy_http()

    async def head(self, *args: Any) -> None:
        """HEAD."""
        await self._proxy_http()

    async def options(self, *args: Any) -> None:
        """OPTIONS."""
        await self._proxy_http()

    # -- websockets ---------------------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """GET: a websocket upgrade connects upstream first, then accepts the browser."""
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            await self._proxy_http()
            return
        limits = proxy_limits(self.settings)
        # Connect to the remote before answering the browser's handshake, so the subprotocol
        # the remote chose is the one the browser is told (and a failure is an HTTP error).
        requested = [
            p.strip()
            for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        scheme = "wss" if self._endpoint.tls else "ws"
        request = HTTPRequest(
            f"{scheme}://127.0.0.1:{self._endpoint.local_port}{self._upstream_target()}",
            headers=self._upstream_headers(_DROP_WS_HEADERS),
            connect_timeout=limits.connect_timeout,
            request_timeout=limits.connect_timeout + limits.first_byte_timeout,
            validate_cert=False,
        )
        try:
            self._upstream_ws = await _connect_upstream_ws(
                request, limits.ws_max_pending, requested or None
            )
        except Exception as error:  # noqa: BLE001 - refused, reset, timed out or an HTTP status
            code = getattr(error, "code", None)
            if isinstance(error, HTTPTimeoutError):
                raise web.HTTPError(
                    504, "The remote notebook server did not accept the websocket in time."
                ) from None
            if isinstance(code, int) and 400 <= code < 600 and code != 599:
                raise web.HTTPError(code, "The remote server refused the websocket.") from None
            raise web.HTTPError(502, "Could not reach the remote notebook server.") from None
        self._record_activity()
        await websocket.WebSocketHandler.get(self, *args, **kwargs)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """The subprotocol the remote server selected."""
        upstream = self._upstream_ws
        return upstream.selected_subprotocol if upstream is not None else None

    async def open(self, *args: Any) -> None:
        """The browser's websocket is open: start relaying what the remote sends."""
        self._ws_pump = asyncio.ensure_future(self._pump_from_remote())

    def _overflow(self) -> None:
        """A message from the remote over the cap: close both ends with 1009, in one log line."""
        self.proxy_log.warning(
            "jupyter-ec2 proxy: closed the websocket of %s: a message from the remote exceeds "
            "the relay's cap of %d bytes (ProxyLimits.ws_max_pending).",
            self._instance_id,
            proxy_limits(self.settings).ws_max_pending,
        )
        upstream, self._upstream_ws = self._upstream_ws, None
        if upstream is not None:
            upstream.close(1009, "message too big for the relay")
        self.close(1009, "message too big for the relay")

    async def _pump_from_remote(self) -> None:
        """Remote → browser, one message at a time, never more than a window ahead of it."""
        limits = proxy_limits(self.settings)
        pending = 0
        last: asyncio.Future | None = None
        while True:
            upstream = self._upstream_ws
            if upstream is None:
                return
            message = await upstream.read_message()
            if message is None and getattr(upstream, "too_big", False):
                self._overflow()
                return
            if message is None:
                code, reason = upstream.close_code, upstream.close_reason
                self.close(code if code not in (None, 1005, 1006) else 1011, reason)
                return
            if self.ws_connection is None or self.ws_connection.is_closing():
                return
            self._record_activity()
            try:
                last = self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                return
            pending += len(message)
            if pending > _WS_WINDOW:
                # Back-pressure: read nothing more from the remote until the browser took it.
                try:
                    await asyncio.wait_for(asyncio.shield(last), limits.idle_timeout)
                except (iostream.StreamClosedError, websocket.WebSocketClosedError):
                    return
                except asyncio.TimeoutError:
                    self.proxy_log.warning(
                        "jupyter-ec2 proxy: closed the websocket of %s: the browser took "
                        "nothing for %g s (ProxyLimits.idle_timeout).",
                        self._instance_id,
                        limits.idle_timeout,
                    )
                    self.on_close()
                    self.close(1011, "the browser is not reading")
                    return
                pending = 0

    async def on_message(self, message: str | bytes) -> None:  # type: ignore[override]
        """A message from the browser: relay it, reading the next only once the remote took it."""
        self._record_activity()
        upstream = self._upstream_ws
        if upstream is None:
            return
        try:
            written = upstream.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            return
        self._to_remote_pending = getattr(self, "_to_remote_pending", 0) + len(message)
        if self._to_remote_pending > _WS_WINDOW:
            self._to_remote_pending = 0
            with contextlib.suppress(iostream.StreamClosedError, websocket.WebSocketClosedError):
                await written

    def on_ping(self, data: bytes) -> None:
        """Browser pings are answered locally (tornado does); nothing to relay."""

    def on_close(self) -> None:
        """The browser closed (or the HTTP client went away): close upstream too."""
        upstream, self._upstream_ws = self._upstream_ws, None
        if upstream is not None:
            upstream.close(self.close_code, self.close_reason)
        pump, self._ws_pump = self._ws_pump, None
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()

    def on_finish(self) -> None:
        """A request that was never upgraded: drop an upstream websocket left open."""
        if self._upstream_ws is not None and self.ws_connection is None:
            self._upstream_ws.close()
            self._upstream_ws = None


class RemoteRedirectHandler(JupyterHandler):
    """``…/remote/{id}`` → ``…/remote/{id}/`` (after authentication)."""

    @web.authenticated
    def get(self, instance_id: str) -> None:
        """Redirect to the path with a trailing slash, keeping the query (minus ``token``)."""
        query = strip_token_param(self.request.query)
        self.redirect(self.request.path + "/" + ("?" + query if query else ""))

    def _request_summary(self) -> str:
        return (
            f"{self.request.method} {scrub_uri(self.request.uri or '')} ({self.request.remote_ip})"
        )


class RemoteProxyHandler(RelayHandler, JupyterHandler):
    """The relay on the local origin (``remote_origin = "same"``), for the local session.

    A page served here runs in the local server's origin: it is trusted like the local server
    (``docs/security.md``). Where the deployment allows, ``remote_origin = "separate"`` serves
    instances on their own origins instead, and this handler refuses.
    """

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        """Authenticate (302 to the login page for a page, 403 otherwise), then find the
        instance's forward (404 unknown, 503 not up)."""
        upgrade = self.request.headers.get("Upgrade", "").lower() == "websocket"
        await JupyterHandler.prepare(self, _redirect_to_login=not upgrade)
        if self._finished:
            return
        if self.current_user is None:
            # Also when the server allows unauthenticated access to undecorated handlers.
            if upgrade or self.request.method not in ("GET", "HEAD"):
                raise web.HTTPError(403)
            web.authenticated(lambda handler: None)(self)
            return
        instance_id = self.path_args[0] if self.path_args else ""
        refuse = self.settings.get(SAME_ORIGIN_REFUSAL_SETTING)
        if refuse is not None:
            refuse(self, instance_id)
            if self._finished:
                return
        self.find_endpoint(instance_id)

    @web.authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        """GET (the local session only)."""
        await RelayHandler.get(self, *args, **kwargs)

    @web.authenticated
    async def post(self, *args: Any, **kwargs: Any) -> None:
        """POST (the local session only)."""
        await RelayHandler.post(self, *args, **kwargs)

    @web.authenticated
    async def put(self, *args: Any, **kwargs: Any) -> None:
        """PUT (the local session only)."""
        await RelayHandler.put(self, *args, **kwargs)

    @web.authenticated
    async def patch(self, *args: Any, **kwargs: Any) -> None:
        """PATCH (the local session only)."""
        await RelayHandler.patch(self, *args, **kwargs)

    @web.authenticated
    async def delete(self, *args: Any, **kwargs: Any) -> None:
        """DELETE (the local session only)."""
        await RelayHandler.delete(self, *args, **kwargs)

    @web.authenticated
    async def head(self, *args: Any, **kwargs: Any) -> None:
        """HEAD (the local session only)."""
        await RelayHandler.head(self, *args, **kwargs)

    @web.authenticated
    async def options(self, *args: Any, **kwargs: Any) -> None:
        """OPTIONS (the local session only)."""
        await RelayHandler.options(self, *args, **kwargs)

    def check_xsrf_cookie(self) -> None:
        """The local server's XSRF check (a token-authenticated remote would skip its own)."""
        return JupyterHandler.check_xsrf_cookie(self)

    def check_origin(self, origin: str | None = None) -> bool:
        """Jupyter's origin check (``allow_origin``…) for the websocket handshake too."""
        return JupyterHandler.check_origin(self, origin)


SAME_ORIGIN_REFUSAL_SETTING = "jupyter_ec2_same_origin_refusal"
"""Tornado setting: ``(handler, instance_id) -> None`` called before the local-origin relay
serves anything; in separate mode it redirects a page to the instance's origin or refuses."""
