"""An origin of its own for each remote notebook: ``http://<instance-id>.localhost:<port>/``.

A page an instance serves is less trusted than the local server (anything running as the
notebook user can serve one). On the local origin it could read the local ``_xsrf`` cookie and
drive the local API with the user's session; on an origin of its own it can do neither: browsers
resolve every ``*.localhost`` name to loopback without DNS (RFC 6761 §6.3), the name is an origin
and a site apart from ``127.0.0.1`` and ``localhost``, and host-only cookies of the local server
are neither sent to it nor readable from it.

The same local server answers on those names, but a request whose ``Host`` is
``<valid-instance-id>.localhost`` reaches only the handlers of this module, never a local route,
and is never authenticated as the local user (no local cookie or token is consulted):

1. the local UI opens ``{base_url}jupyter-ec2/open/{id}`` on the local origin (authenticated by
   the local session), which mints a one-time code valid for :data:`HANDOFF_SECONDS` and redirects
   to ``http://{id}.localhost:{port}{base_url}jupyter-ec2/handoff/{id}?code=…``;
2. there the code is redeemed once: the answer sets a host-only, HttpOnly session cookie valid
   for that instance's origin only (and an ``_xsrf`` cookie of that origin) and redirects into
   the notebook;
3. from then on :class:`InstanceProxyHandler` relays to the instance with the same protections as
   the local-origin relay (``jupyter_ec2.proxy``), checking that origin's own XSRF token.

``remote_origin`` picks the mode (:func:`resolve_mode`): ``"separate"`` as above, ``"same"`` the
local-origin path ``{base_url}jupyter-ec2/remote/{id}/`` (for deployments where no second origin
reaches the server, such as a single-domain JupyterHub), ``"auto"`` separate when the server
listens on loopback and is not a JupyterHub single-user server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import httputil, web
from tornado.routing import HostMatches

from .models import INSTANCE_ID_PATTERN
from .proxy import (
    SAME_ORIGIN_REFUSAL_SETTING,
    RelayHandler,
    remote_base_url,
    scrub_uri,
)

MODES = ("auto", "separate", "same")
"""Values of ``EC2Launcher.remote_origin``."""

HOST_PATTERN = rf"({INSTANCE_ID_PATTERN})\.localhost"
"""The host names of instance origins (tornado matches it against the name without port)."""

ORIGINS_SETTING = "jupyter_ec2_origins"
"""Tornado setting holding the :class:`InstanceOrigins`."""

SESSION_COOKIE = "jupyter-ec2-instance"
XSRF_COOKIE = "_xsrf"
LOCAL_HINT_COOKIE = "jupyter-ec2-local"
HANDOFF_SECONDS = 60.0
"""How long a handoff code may wait to be redeemed."""
SESSION_SECONDS = 12 * 3600
"""How long an instance origin's session lasts; then the browser goes through a handoff again."""
_MAX_CODES = 256
_HOST_RE = re.compile(HOST_PATTERN + r"(?::(\d{1,5}))?", re.IGNORECASE)


def resolve_mode(mode: str, ip: str, *, jupyterhub: bool = False, sock: str = "") -> str:
    """``"separate"`` or ``"same"`` for a configured ``remote_origin`` and the server's address."""
    if mode in ("separate", "same"):
        return mode
    if jupyterhub or sock:
        return "same"
    return "separate" if is_loopback(ip) else "same"


def is_loopback(ip: str) -> bool:
    """Whether the server's ``ip`` setting is a loopback address or ``localhost``."""
    if ip in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(ip.strip("[]")).is_loopback
    except ValueError:
        return False


def running_under_jupyterhub(environ: dict[str, str] | None = None) -> bool:
    """Whether this server is a JupyterHub single-user server (its address is the hub's)."""
    env = os.environ if environ is None else environ
    return bool(env.get("JUPYTERHUB_SERVICE_PREFIX") or env.get("JUPYTERHUB_API_TOKEN"))


def instance_host(instance_id: str) -> str:
    """The host name of an instance's origin."""
    return f"{instance_id}.localhost"


def remote_url(instance_id: str, base_url: str, origins: InstanceOrigins | None) -> str:
    """The API's ``url`` of a ready instance: absolute on its own origin, else the local path."""
    path = url_path_join(remote_base_url(base_url, instance_id), "lab")
    if origins is None or origins.mode != "separate":
        return path
    return origins.instance_origin(instance_id) + path


def _safe_path(path: str, prefix: str) -> bool:
    """Whether ``path`` is a plain path inside ``prefix`` (no scheme, host, dots or backslash)."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return False
    if any(ord(c) < 0x21 for c in path):
        return False
    parts = urlsplit(path)
    if parts.scheme or parts.netloc:
        return False
    segments = unquote(parts.path).split("/")
    if ".." in segments or "." in segments:
        return False
    return parts.path == prefix.rstrip("/") or parts.path.startswith(prefix)


@dataclass
class _Code:
    instance_id: str
    next_path: str
    local_origin: str
    expires: float


class InstanceOrigins:
    """The mode, the one-time handoff codes and the session credentials of instance origins.

    Codes and the signing key live in memory only: a restarted server forgets them, and the
    browser goes through a handoff again (transparently while the local session lasts).
    """

    def __init__(
        self,
        mode: str,
        port: Callable[[], int] | int,
        base_url: str = "/",
        scheme: str = "http",
        local_host: str = "localhost",
    ):
        if mode not in ("separate", "same"):
            raise ValueError(f"mode must be 'separate' or 'same', not {mode!r}")
        self.mode = mode
        self._port = port
        self.base_url = base_url
        self.scheme = scheme
        self.local_host = local_host
        self._codes: OrderedDict[str, _Code] = OrderedDict()
        self._key = secrets.token_bytes(32)

    @property
    def port(self) -> int:
        """The server's port (read when asked: it may be chosen after start-up)."""
        return self._port() if callable(self._port) else self._port

    def instance_origin(self, instance_id: str, port: int | None = None) -> str:
        """``http://<id>.localhost:<port>``."""
        return f"{self.scheme}://{instance_host(instance_id)}:{port or self.port}"

    def default_local_origin(self) -> str:
        """Where the local server is reached when no request told us."""
        host = self.local_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"

    def prefix(self, instance_id: str) -> str:
        """The instance's path on either origin."""
        return remote_base_url(self.base_url, instance_id)

    def safe_next(self, instance_id: str, next_path: str | None) -> str:
        """``next_path`` if it stays inside the instance's notebook, else its lab page."""
        prefix = self.prefix(instance_id)
        if next_path and _safe_path(next_path, prefix):
            return next_path
        return url_path_join(prefix, "lab")

    # -- handoff ------------------------------------------------------------------------------

    def mint(self, instance_id: str, next_path: str, local_origin: str) -> str:
        """A one-time code for ``instance_id``'s origin, valid :data:`HANDOFF_SECONDS`."""
        now = time.monotonic()
        for code in [c for c, v in self._codes.items() if v.expires <= now]:
            del self._codes[code]
        while len(self._codes) >= _MAX_CODES:
            self._codes.popitem(last=False)
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(instance_id, next_path, local_origin, now + HANDOFF_SECONDS)
        return code

    def redeem(self, code: str, instance_id: str) -> _Code | None:
        """The handoff of ``code`` if unexpired and for ``instance_id``; used up either way."""
        found = self._codes.pop(code, None)
        if found is None or found.expires <= time.monotonic():
            return None
        if not hmac.compare_digest(found.instance_id, instance_id):
            return None
        return found

    # -- sessions -----------------------------------------------------------------------------

    def _mac(self, *fields: str) -> str:
        return hmac.new(self._key, "|".join(fields).encode(), hashlib.sha256).hexdigest()

    def session_value(self, instance_id: str, xsrf: str) -> str:
        """A session credential for ``instance_id``'s origin, bound to its XSRF token."""
        expires = str(int(time.time() + SESSION_SECONDS))
        return f"{expires}.{self._mac('session', instance_id, expires, xsrf)}"

    def check_session(self, value: str | None, instance_id: str, xsrf: str | None) -> bool:
        """Whether ``value`` is a live session of ``instance_id``'s origin (with that XSRF)."""
        if not value or not xsrf or "." not in value:
            return False
        expires, mac = value.split(".", 1)
        if not expires.isascii() or not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(mac, self._mac("session", instance_id, expires, xsrf))

    def hint_value(self, local_origin: str) -> str:
        """A signed note of where the local server was reached (for a later handoff)."""
        return f"{quote(local_origin, safe='')}.{self._mac('local', local_origin)}"

    def read_hint(self, value: str | None) -> str | None:
        """The local origin of a :meth:`hint_value`, if it is ours and names loopback."""
        if not value or "." not in value:
            return None
        quoted, mac = value.rsplit(".", 1)
        origin = unquote(quoted)
        if not hmac.compare_digest(mac, self._mac("local", origin)):
            return None
        return origin if _is_local_origin(origin) else None


def _is_local_origin(origin: str) -> bool:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.path or parts.query:
        return False
    host = parts.hostname or ""
    return host == "localhost" or is_loopback(host)


def _request_port(request: httputil.HTTPServerRequest, default: int) -> int:
    _, port = httputil.split_host_and_port(request.host)
    return port or default


# -- the local origin ---------------------------------------------------------------------------


class OpenHandler(JupyterHandler):
    """``GET {base_url}jupyter-ec2/open/{id}``: hand the local session's browser to the instance.

    On the local origin, authenticated by the local session. A GET (so that a bookmark or a
    reload works), which only ever sends the user's own browser to the user's own instance.
    """

    @web.authenticated
    def get(self, instance_id: str) -> None:
        """Mint a handoff code and redirect to the instance's origin (or its local path)."""
        origins: InstanceOrigins = self.settings[ORIGINS_SETTING]
        lookup = self.settings.get("jupyter_ec2_remote_lookup")
        if lookup is None or lookup(instance_id) is None:
            raise web.HTTPError(404, f"No remote notebook for instance {instance_id!r}.")
        next_path = origins.safe_next(instance_id, self.get_argument("next", None))
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")
        if origins.mode != "separate":
            self.redirect(next_path)
            return
        local_origin = f"{self.request.protocol}://{self.request.host}"
        code = origins.mint(instance_id, next_path, local_origin)
        port = _request_port(self.request, origins.port)
        target = url_path_join(origins.base_url, "jupyter-ec2/handoff", instance_id)
        origin = f"{self.request.protocol}://{instance_host(instance_id)}:{port}"
        self.redirect(f"{origin}{target}?code={code}")

    def _request_summary(self) -> str:
        return (
            f"{self.request.method} {scrub_uri(self.request.uri or '')} ({self.request.remote_ip})"
        )


def same_origin_refusal(handler: JupyterHandler, instance_id: str) -> None:
    """In separate mode, the local origin never serves a remote page to a browser.

    A program that authenticates with the local token in an ``Authorization`` header (which
    no page can make a browser send) is still relayed; a page GET is sent to the handoff;
    anything else is refused.
    """
    origins: InstanceOrigins | None = handler.settings.get(ORIGINS_SETTING)
    if origins is None or origins.mode != "separate":
        return
    auth = handler.request.headers.get("Authorization", "")
    if auth[:6].lower() == "token ":
        return
    is_page = handler.request.method in ("GET", "HEAD") and (
        handler.request.headers.get("Upgrade", "").lower() != "websocket"
    )
    if not is_page:
        raise web.HTTPError(
            403,
            f"The notebook of {instance_id} is served on its own origin "
            f"({origins.instance_origin(instance_id)}), not here.",
        )
    query = f"?next={quote(handler.request.path, safe='/')}"
    handler.redirect(url_path_join(origins.base_url, "jupyter-ec2/open", instance_id) + query)


# -- instance origins ---------------------------------------------------------------------------


class _InstanceOriginMixin:
    """What every handler on an instance's origin shares: the host names the instance."""

    request: httputil.HTTPServerRequest
    settings: dict

    def host_instance(self) -> str:
        """The instance id in ``Host`` (the router only sends valid ones here)."""
        match = _HOST_RE.fullmatch(self.request.host)
        if match is None:
            raise web.HTTPError(400, "Not an instance origin.")
        return match.group(1).lower()

    def this_origin(self) -> str:
        """``scheme://host[:port]`` as the browser named this origin."""
        return f"{self.request.protocol}://{self.request.host}".lower()

    def origins(self) -> InstanceOrigins:
        """The shared :class:`InstanceOrigins`."""
        return self.settings[ORIGINS_SETTING]

    def check_xsrf_cookie(self) -> None:
        """This origin's own double-submit check (the local server's ``_xsrf`` is never here)."""
        cookie = self.get_cookie(XSRF_COOKIE)  # type: ignore[attr-defined]
        sent = self.request.headers.get("X-XSRFToken") or self.request.headers.get("X-CSRFToken")
        if not cookie or not sent or not hmac.compare_digest(cookie, sent):
            raise web.HTTPError(403, "XSRF check failed on the instance's origin.")

    def _request_summary(self) -> str:
        return (
            f"{self.request.method} {scrub_uri(self.request.uri or '')} ({self.request.remote_ip})"
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as JSON ``{"message": …}``."""
        self._headers = httputil.HTTPHeaders()  # type: ignore[attr-defined]
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        reason = self._reason  # type: ignore[attr-defined]
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        self.finish(json.dumps({"message": reason}))  # type: ignore[attr-defined]


class HandoffHandler(_InstanceOriginMixin, web.RequestHandler):
    """``GET {base_url}jupyter-ec2/handoff/{id}?code=…`` on the instance's origin."""

    @allow_unauthenticated  # the one-time code is the credential, never the local session
    def get(self, instance_id: str) -> None:
        """Redeem the code once: set this origin's session and XSRF cookies, go to the notebook."""
        if self.host_instance() != instance_id:
            raise web.HTTPError(404, "This origin serves only its own instance.")
        origins = self.origins()
        found = origins.redeem(self.get_argument("code", ""), instance_id)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")
        if found is None:
            raise web.HTTPError(
                403,
                "This link to the remote notebook was already used or has expired. "
                "Open the notebook again from JupyterLab's EC2 panel.",
            )
        secure = self.request.protocol == "https"
        xsrf = secrets.token_urlsafe(32)
        common: dict[str, Any] = {"path": "/", "samesite": "Lax", "secure": secure}
        self.set_cookie(
            SESSION_COOKIE,
            origins.session_value(instance_id, xsrf),
            httponly=True,
            expires_days=SESSION_SECONDS / 86400,
            **common,
        )
        self.set_cookie(XSRF_COOKIE, xsrf, **common)
        self.set_cookie(
            LOCAL_HINT_COOKIE,
            origins.hint_value(found.local_origin),
            httponly=True,
            expires_days=30,
            **common,
        )
        self.redirect(found.next_path)


class InstanceProxyHandler(_InstanceOriginMixin, RelayHandler):
    """The relay on an instance's own origin: this origin's session, never the local one."""

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        """The host, the path and the session must all name the same instance."""
        host_id = self.host_instance()
        instance_id = self.path_args[0] if self.path_args else ""
        if instance_id != host_id:
            raise web.HTTPError(404, "This origin serves only its own instance.")
        origins = self.origins()
        upgrade = self.request.headers.get("Upgrade", "").lower() == "websocket"
        if not origins.check_session(
            self.get_cookie(SESSION_COOKIE), instance_id, self.get_cookie(XSRF_COOKIE)
        ):
            if self.request.method == "GET" and not upgrade:
                # A page with no (or an expired) session: a new handoff from the local session.
                local = origins.read_hint(self.get_cookie(LOCAL_HINT_COOKIE))
                local = local or origins.default_local_origin()
                target = url_path_join(origins.base_url, "jupyter-ec2/open", instance_id)
                self.redirect(f"{local}{target}?next={quote(self.request.uri or '', safe='/')}")
                return
            raise web.HTTPError(403, "No session for this instance's origin: open it again.")
        if self.request.method not in ("GET", "HEAD", "OPTIONS"):
            self.check_xsrf_cookie()
        if upgrade and not self.check_origin(self.request.headers.get("Origin")):
            raise web.HTTPError(403, "Cross-origin websocket refused.")
        self.find_endpoint(instance_id)

    @allow_unauthenticated  # this origin's own session, checked in prepare
    async def get(self, *args: Any, **kwargs: Any) -> None:
        """GET (this origin's session only)."""
        await RelayHandler.get(self, *args, **kwargs)

    @allow_unauthenticated  # this origin's own session, checked in prepare
    async def post(self, *args: Any, **kwargs: Any) -> None:
        """POST (this origin's session only)."""
        await RelayHandler.post(self, *args, **kwargs)

    @allow_unauthenticated  # this origin's own session, checked in prepare
    async def put(self, *args: Any, **kwargs: Any) -> None:
        """PUT (this origin's session only)."""
        await RelayHandler.put(self, *args, **kwargs)

    @allow_unauthenticated  # this origin's own session, checked in prepare
    async def patch(self, *args: Any, **kwargs: Any) -> None:
        """PATCH (this origin's session only)."""
        await RelayHandler.patch(self, *args, **kwargs)

    @allow_unauthenticated  # this origin's own session, checked in prepare
    async def delete(self, *args: Any, **kwargs: Any) -> None:
        """DELETE (this origin's session only)."""
        await RelayHandler.delete(self, *args, **kwargs)

    @allow_unauthenticated  # this origin's own session, checked in prepare
    async def head(self, *args: Any, **kwargs: Any) -> None:
        """HEAD (this origin's session only)."""
        await RelayHandler.head(self, *args, **kwargs)

    @allow_unauthenticated  # this origin's own session, checked in prepare
    async def options(self, *args: Any, **kwargs: Any) -> None:
        """OPTIONS (this origin's session only)."""
        await RelayHandler.options(self, *args, **kwargs)

    def check_origin(self, origin: str | None = None) -> bool:
        """A websocket is accepted only from a page of this very origin."""
        return bool(origin) and origin.lower() == self.this_origin()  # type: ignore[union-attr]


class InstanceOriginRefusal(_InstanceOriginMixin, web.RequestHandler):
    """Every other path on an instance's origin: the local server is not reachable there."""

    @allow_unauthenticated
    def prepare(self) -> None:
        """Refuse, whatever the method."""
        raise web.HTTPError(
            404, "An instance's origin serves only that instance's notebook, nothing local."
        )

    def check_xsrf_cookie(self) -> None:
        """Nothing to check: everything is refused."""


def instance_origin_handlers(base_url: str) -> list[tuple[str, type, dict]]:
    """The routes of instance origins, ending with a catch-all refusal."""
    remote = url_path_join(base_url, "jupyter-ec2/remote")
    return [
        (url_path_join(base_url, "jupyter-ec2/handoff") + r"/([^/]+)", HandoffHandler, {}),
        (remote + r"/([^/]+)/(.*)", InstanceProxyHandler, {}),
        (r".*", InstanceOriginRefusal, {}),
    ]


def local_origin_handlers(base_url: str) -> list[tuple[str, type, dict]]:
    """The local origin's route that starts a handoff."""
    return [
        (
            url_path_join(base_url, "jupyter-ec2/open") + rf"/({INSTANCE_ID_PATTERN})",
            OpenHandler,
            {},
        )
    ]


def install_instance_origins(web_app: web.Application, origins: InstanceOrigins) -> None:
    """Serve instance origins on ``web_app``, ahead of every other rule.

    Tornado tries host rules in order and falls through to the next when a rule's routes do not
    match; the catch-all refusal and the first place make sure a request on an instance origin
    never reaches a local handler (or jupyter_server's own Host check, which would refuse the
    name: it is accepted here, for ``<valid-instance-id>.localhost`` only).
    """
    web_app.settings[ORIGINS_SETTING] = origins
    # The handoff code is single-use and short-lived; still, no log line shows it.
    scrubbed = web_app.settings.setdefault("extra_log_scrub_param_keys", [])
    if "code" not in scrubbed:
        scrubbed.append("code")
    web_app.settings[SAME_ORIGIN_REFUSAL_SETTING] = same_origin_refusal
    if origins.mode != "separate":
        return
    web_app.add_handlers(HOST_PATTERN, instance_origin_handlers(origins.base_url))
    rules = web_app.default_router.rules
    ours = [
        rule
        for rule in rules
        if isinstance(rule.matcher, HostMatches)
        and rule.matcher.host_pattern.pattern.rstrip("$") == HOST_PATTERN
    ]
    for rule in ours:
        rules.remove(rule)
        rules.insert(0, rule)
