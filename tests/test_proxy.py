"""The ``/jupyter-ec2/remote/{id}/`` proxy, in a real local jupyter_server (pytest-jupyter).

Two kinds of far ends: a recording Tornado app (fast, precise checks of what is forwarded),
and a real remote ``jupyter server`` behind a private sshd and a :class:`TunnelManager`
forward (the acceptance tests). The handler is registered on the test server with a lookup
the test controls, so nothing here depends on the extension's manager.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie

import pytest
from test_tunnel import (
    INSTANCE_ID,
    LOCAL_BASE_URL,
    HostKeys,
    RemoteJupyter,
    make_target,
    run_in_kernel,
    start_remote_jupyter,
    stop_process,
)
from tornado import httpclient, httpserver, web, websocket
from tornado.testing import bind_unused_port

from jupyter_ec2.keys import generate_ed25519
from jupyter_ec2.proxy import (
    LIMITS_SETTING,
    LOOKUP_SETTING,
    ProxyLimits,
    RemoteEndpoint,
    _TokenScrubber,
    close_upstream_pool,
    remote_base_url,
    remote_handlers,
    strip_token_param,
)
from jupyter_ec2.testing.hosts import SSHHost
from jupyter_ec2.tunnel import TunnelManager, TunnelState

ECHO_ID = "i-00000000000000ec0"
REMOTE_TOKEN = "remote-" + secrets.token_hex(16)


# -- the local server -------------------------------------------------------------------------


@pytest.fixture
def jp_base_url() -> str:
    """A non-root base_url, as under JupyterHub; the remote path extends it."""
    return LOCAL_BASE_URL


@pytest.fixture
def jp_server_config() -> dict:
    """Authentication on; the extension itself is not loaded (its manager is not needed)."""
    return {"ServerApp": {"allow_unauthenticated_access": False}}


@pytest.fixture
def endpoints() -> dict[str, RemoteEndpoint]:
    """What the lookup answers: instance id → endpoint (tests edit it)."""
    return {}


@pytest.fixture
def proxy_server(jp_serverapp, http_server, endpoints):
    """The local server (listening) with the remote routes and a lookup over ``endpoints``."""
    app = jp_serverapp.web_app
    app.add_handlers(".*$", remote_handlers(jp_serverapp.base_url))
    app.settings[LOOKUP_SETTING] = endpoints.get
    yield jp_serverapp
    close_upstream_pool(app.settings)


@pytest.fixture
def local_url(proxy_server, jp_http_port):
    """``url(instance_id, path)`` → the proxied URL on the local server."""

    def url(instance_id: str, path: str = "", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{jp_http_port}{LOCAL_BASE_URL}jupyter-ec2/remote/{instance_id}/{path}"

    return url


async def fetch(url: str, **kwargs) -> httpclient.HTTPResponse:
    """Fetch ``url`` (no redirect followed) without raising for an error status."""
    kwargs.setdefault("follow_redirects", False)
    kwargs.setdefault("request_timeout", 60)
    kwargs.setdefault("allow_nonstandard_methods", True)
    return await httpclient.AsyncHTTPClient().fetch(url, raise_error=False, **kwargs)


def all_header_text(response: httpclient.HTTPResponse) -> str:
    """Every response header line, for leak checks."""
    return "\n".join(f"{k}: {v}" for k, v in response.headers.get_all())


async def login_cookie(url: str, auth: dict) -> str:
    """Log in with the local token once and return the local login cookie (``name=value``)."""
    response = await fetch(url, headers=auth)
    assert response.code == 200, response.code
    for header in response.headers.get_list("Set-Cookie"):
        cookie = SimpleCookie(header)
        for name, morsel in cookie.items():
            if name.startswith("username-"):
                return f"{name}={morsel.value}"
    raise AssertionError("the local server set no login cookie")


# -- a recording far end ----------------------------------------------------------------------


class _Record(web.RequestHandler):
    """Answers every request with what it received; a few paths behave specially."""

    def initialize(self, log: list) -> None:
        self.log = log

    def compute_etag(self):
        return None

    async def _answer(self, *args) -> None:
        request = self.request
        self.log.append(request)
        path = request.path.rsplit("/", 1)[-1]
        if path in _SPECIAL:
            _SPECIAL[path](self)
            return
        if path == "page.html":
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.set_header("X-Remote", f"token={REMOTE_TOKEN}")
            self.set_cookie("username-127-0-0-1-9", "remote-login")
            self.set_cookie("_xsrf", "remote-xsrf")
            self.write(f'<script id="jupyter-config-data">{{"token": "{REMOTE_TOKEN}"}}</script>')
            return
        if path == "stream":  # 16 MiB with a Content-Length, flushed in 64 KiB pieces
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(256 * 65536))
            for _ in range(256):
                self.write(b"s" * 65536)
                await self.flush()
            return
        if path == "chunked":  # no Content-Length: chunked transfer encoding
            for part in range(5):
                self.write(f"part{part}-" * 1000)
                await self.flush()
            return
        body = {
            "method": request.method,
            "uri": request.uri,
            "headers": dict(request.headers.get_all()),
            "body": request.body.decode("latin1"),
        }
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(body))

    get = post = put = patch = delete = options = _answer

    def head(self, *args) -> None:
        self.log.append(self.request)
        self.set_header("Content-Length", "5")


def _gzip_bomb(handler: web.RequestHandler) -> None:
    # Small enough to build fast here (bench/bench_proxy_limits.py sends the 1 MB one).
    handler.set_header("Content-Type", "text/html")
    handler.set_header("Content-Encoding", "gzip")
    handler.write(_bomb_bytes(64 * 1024 * 1024))


@functools.cache
def _bomb_bytes(size: int) -> bytes:
    return gzip.compress(b"\0" * size, compresslevel=9)


def _cors(handler: web.RequestHandler) -> None:
    handler.set_header("Access-Control-Allow-Origin", "*")
    handler.set_header("Access-Control-Allow-Credentials", "true")
    handler.set_header("Access-Control-Expose-Headers", "X-Anything")
    handler.write("cors")


def _redirect(where: str) -> Callable[[web.RequestHandler], None]:
    def answer(handler: web.RequestHandler) -> None:
        target = where.replace("{host}", handler.request.host)
        handler.redirect(target)

    return answer


_SPECIAL: dict[str, Callable[[web.RequestHandler], None]] = {
    "bomb.html": _gzip_bomb,
    "cors": _cors,
    "redirect-out": _redirect("http://evil.example/steal"),
    "redirect-local": _redirect(f"{LOCAL_BASE_URL}api/contents"),
    "redirect-dots": _redirect(f"{LOCAL_BASE_URL}jupyter-ec2/remote/{ECHO_ID}/../../../api"),
    "redirect-slashes": _redirect("/\\evil.example/"),
    "redirect-relative": _redirect("lab/tree"),
    "redirect-absolute": _redirect(
        f"http://{{host}}{LOCAL_BASE_URL}jupyter-ec2/remote/{ECHO_ID}/lab?x=1"
    ),
}


class _CountingServer(httpserver.HTTPServer):
    """An HTTPServer that counts the TCP connections it accepted."""

    connections = 0

    def handle_stream(self, stream, address):
        type(self).connections += 1
        return super().handle_stream(stream, address)


@pytest.fixture
def recorder(jp_asyncio_loop, endpoints):
    """A recording HTTP server on 127.0.0.1, registered as instance ``ECHO_ID``."""
    log: list = []
    app = web.Application([(r"/(.*)", _Record, {"log": log})])
    server_class = type("Counting", (_CountingServer,), {"connections": 0})
    sock, port = bind_unused_port()

    async def start() -> _CountingServer:
        server = server_class(app)
        server.add_sockets([sock])
        return server

    server = jp_asyncio_loop.run_until_complete(start())
    endpoints[ECHO_ID] = RemoteEndpoint(local_port=port, token=REMOTE_TOKEN)
    server.log = log  # type: ignore[attr-defined]
    yield server
    server.stop()
    jp_asyncio_loop.run_until_complete(server.close_all_connections())


# -- the proxy's own decisions ----------------------------------------------------------------


async def test_forwarded_request_is_cleaned(recorder, local_url, jp_serverapp):
    # Given a browser request with the local token in the query and a header, cookies, an XSRF
    # header, and a path holding an encoded '#' and '?'
    token = jp_serverapp.identity_provider.token
    url = local_url(ECHO_ID, f"files/a%23b%3Fc%20d.txt?x=1&token={token}&y=%2F")
    headers = {
        "Authorization": f"token {token}",
        "Cookie": "_xsrf=abc; username-localhost-8888=secret",
        "X-XSRFToken": "abc",
        "Origin": "http://evil.example",
        "Referer": f"http://127.0.0.1:1{LOCAL_BASE_URL}lab?token={token}",
        "Accept-Encoding": "gzip",
        "X-Custom": "kept",
    }
    # When it goes through the proxy (the cross-site Origin only matters for non-GET)
    response = await fetch(url, headers=headers)
    # Then the far end got the raw path, the query without token, and only safe headers
    assert response.code == 200, response.body
    seen = json.loads(response.body)
    assert seen["uri"] == (
        f"{LOCAL_BASE_URL}jupyter-ec2/remote/{ECHO_ID}/files/a%23b%3Fc%20d.txt?x=1&y=%2F"
    )
    forwarded = {k.lower(): v for k, v in seen["headers"].items()}
    assert forwarded["authorization"] == f"token {REMOTE_TOKEN}"
    assert forwarded["host"] == f"127.0.0.1:{recorder_port(recorder)}"
    assert forwarded["origin"] == f"http://127.0.0.1:{recorder_port(recorder)}"
    assert forwarded["accept-encoding"] == "identity"
    assert forwarded["x-custom"] == "kept"
    assert "cookie" not in forwarded
    assert "x-xsrftoken" not in forwarded
    assert "referer" not in forwarded
    assert token not in json.dumps(seen)


def recorder_port(recorder) -> int:
    """The port of the recording server."""
    return next(iter(recorder._sockets.values())).getsockname()[1]


async def test_remote_cookies_and_token_never_reach_the_browser(
    recorder, local_url, jp_auth_header
):
    # Given a remote page that embeds its token, names it in a header and sets cookies
    # When the browser loads it through the proxy
    response = await fetch(local_url(ECHO_ID, "lab/page.html"), headers=jp_auth_header)
    # Then the page arrives without the token, and no remote cookie is passed on
    assert response.code == 200
    assert REMOTE_TOKEN not in response.body.decode()
    assert '"token": ""' in response.body.decode()
    assert REMOTE_TOKEN not in all_header_text(response)
    cookies = " ".join(response.headers.get_list("Set-Cookie"))
    assert "remote-login" not in cookies and "remote-xsrf" not in cookies
    assert int(response.headers["Content-Length"]) == len(response.body)


async def test_upstream_connections_are_kept_alive(recorder, local_url, jp_auth_header):
    # Given the proxy and a far end that counts TCP connections
    # When ten requests are made one after the other
    for _ in range(10):
        response = await fetch(local_url(ECHO_ID, "api/status"), headers=jp_auth_header)
        assert response.code == 200
    # Then they shared one upstream connection (one SSH channel through a forward)
    assert type(recorder).connections == 1


async def test_chunked_response_is_relayed_and_connection_reused(
    recorder, local_url, jp_auth_header
):
    # Given a far end that answers without a Content-Length (chunked, flushed in parts)
    expected = "".join(f"part{part}-" * 1000 for part in range(5)).encode()
    # When it is fetched twice through the proxy
    for _ in range(2):
        response = await fetch(local_url(ECHO_ID, "chunked"), headers=jp_auth_header)
        # Then the whole body arrives
        assert response.code == 200
        assert response.body == expected
    # And the upstream connection was reused (the chunked framing was read to its end)
    assert type(recorder).connections == 1


def _slow_download(port: int, path: str, headers: dict) -> int:
    """GET with a raw socket, reading slowly (the browser is the bottleneck); body length."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            time.sleep(0.0005)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert b"Content-Length: 16777216" in head
    return len(body)


async def test_slow_browser_gets_the_whole_stream(
    recorder, local_url, jp_http_port, jp_auth_header
):
    # Given a far end that streams 16 MiB in many small flushes, and a browser reading slowly
    path = local_url(ECHO_ID, "stream").split(str(jp_http_port), 1)[1]
    loop = asyncio.get_running_loop()
    # When it downloads through the proxy
    size = await asyncio.wait_for(
        loop.run_in_executor(None, _slow_download, jp_http_port, path, jp_auth_header), 60
    )
    # Then every byte arrives (back-pressure never loses a write or stalls the response)
    assert size == 256 * 65536


async def test_request_bodies_and_verbs_are_relayed(recorder, local_url, jp_auth_header):
    # Given a PUT with a body and a HEAD
    body = os.urandom(300_000).hex()
    put = await fetch(
        local_url(ECHO_ID, "api/contents/x"), method="PUT", body=body, headers=jp_auth_header
    )
    head = await fetch(local_url(ECHO_ID, "api/x"), method="HEAD", headers=jp_auth_header)
    # Then the far end got the same method and body, and HEAD kept its length without a body
    assert put.code == 200
    assert json.loads(put.body)["body"] == body
    assert json.loads(put.body)["method"] == "PUT"
    assert head.code == 200 and head.body == b""


async def test_unknown_instance_is_404_json(proxy_server, local_url, jp_auth_header):
    # Given no forward for an instance / When its notebook is asked for
    response = await fetch(local_url("i-0000000000000dead", "lab"), headers=jp_auth_header)
    # Then 404 with a JSON message naming it
    assert response.code == 404
    assert "i-0000000000000dead" in json.loads(response.body)["message"]


async def test_reconnecting_forward_is_503_retry(
    proxy_server, endpoints, local_url, jp_auth_header
):
    # Given a forward that is reconnecting
    endpoints[ECHO_ID] = RemoteEndpoint(local_port=1, token="t", state="reconnecting")
    # When its notebook is asked for
    response = await fetch(local_url(ECHO_ID, "api/status"), headers=jp_auth_header)
    # Then 503 says so and when to retry
    assert response.code == 503
    assert "reconnecting" in json.loads(response.body)["message"]
    assert response.headers["Retry-After"]


async def test_forward_port_closed_is_503(proxy_server, endpoints, local_url, jp_auth_header):
    # Given a forward said to be up whose port refuses connections
    with_free = bind_unused_port()
    with_free[0].close()
    endpoints[ECHO_ID] = RemoteEndpoint(local_port=with_free[1], token="t")
    # When a request arrives / Then it is a clean 503, not a 500
    response = await fetch(local_url(ECHO_ID, "api/status"), headers=jp_auth_header)
    assert response.code == 503


async def test_missing_trailing_slash_redirects(proxy_server, jp_http_port, jp_serverapp):
    # Given the bare instance URL / When fetched / Then it redirects to the slashed one
    token = jp_serverapp.identity_provider.token
    url = f"http://127.0.0.1:{jp_http_port}{LOCAL_BASE_URL}jupyter-ec2/remote/{ECHO_ID}"
    response = await fetch(url + f"?token={token}&a=1")
    assert response.code == 302
    assert response.headers["Location"].endswith(f"/remote/{ECHO_ID}/?a=1")


@pytest.mark.parametrize(
    ("method", "upgrade", "expected"),
    [("GET", False, 302), ("POST", False, 403), ("PUT", False, 403), ("GET", True, 403)],
)
async def test_anonymous_requests_are_refused(recorder, local_url, method, upgrade, expected):
    # Given a request without a token or a login cookie
    headers = {"Upgrade": "websocket", "Connection": "Upgrade"} if upgrade else {}
    if upgrade:
        headers.update(
            {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
        )
    body = b"{}" if method in ("POST", "PUT") else None
    # When it reaches the proxy
    response = await fetch(
        local_url(ECHO_ID, "api/contents"), method=method, body=body, headers=headers
    )
    # Then it is refused (a login redirect for a page GET) and nothing reached the far end
    assert response.code == expected
    if expected == 302:
        assert "/login" in response.headers["Location"]
    assert recorder.log == []


async def test_cross_site_cookie_post_needs_xsrf(recorder, local_url, jp_auth_header):
    # Given a browser logged in to the local server (a login cookie, no token)
    cookie = await login_cookie(local_url(ECHO_ID, "api/status"), jp_auth_header)
    recorder.log.clear()
    url = local_url(ECHO_ID, "api/contents")
    # When a page posts with that cookie but without the XSRF token (cross-site or not)
    for extra in ({"Origin": "http://evil.example"}, {}):
        response = await fetch(url, method="POST", body="{}", headers={"Cookie": cookie, **extra})
        # Then the local server refuses it and nothing reaches the remote
        assert response.code in (403, 404), response.code
    assert recorder.log == []
    # When the same-origin page sends the _xsrf cookie and header / Then it goes through
    headers = {"Cookie": f"{cookie}; _xsrf=xyz123", "X-XSRFToken": "xyz123"}
    response = await fetch(url, method="POST", body="{}", headers=headers)
    assert response.code == 200
    assert len(recorder.log) == 1


def test_token_query_parameter_is_stripped_exactly():
    # Given queries with and without token parameters / Then only those go, bytes kept as sent
    assert strip_token_param("token=a") == ""
    assert strip_token_param("a=1&token=x&b=%20&tok%65n=y") == "a=1&b=%20"
    assert strip_token_param("tokens=1&a") == "tokens=1&a"


def test_token_scrubber_handles_any_split():
    # Given a stream that contains the secret several times, cut at random places
    secret = b"s3cr3t-token-value"
    text = b"abc" + secret + b"x" * 100 + secret + secret + b"tail" + secret[:5]
    for seed in range(200):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        scrubber = _TokenScrubber(secret)
        out = b"".join(scrubber.feed(p) for p in pieces) + scrubber.flush()
        # Then every occurrence is gone and everything else is intact
        assert out == text.replace(secret, b"")


# -- through a real forward to a real remote notebook -----------------------------------------


@pytest.fixture(scope="module")
def host_keys() -> HostKeys:
    """Fresh ed25519 keys for the module's host."""
    user, host = generate_ed25519(), generate_ed25519()
    return HostKeys(user.private_openssh, user.public_openssh, host.private_openssh)


@pytest.fixture(scope="module")
def remote_jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteJupyter]:
    """A real jupyter server whose base_url is the proxied path of ``INSTANCE_ID``."""
    workdir = tmp_path_factory.mktemp("remote-jupyter")
    remote = start_remote_jupyter(workdir, remote_base_url(LOCAL_BASE_URL, INSTANCE_ID))
    yield remote
    stop_process(remote.process)


@pytest.fixture(scope="module")
def remote_forward(
    tmp_path_factory, host_keys: HostKeys, remote_jupyter: RemoteJupyter
) -> Iterator[tuple[TunnelManager, object]]:
    """A forward over a private sshd to the remote jupyter server (one for the module)."""
    host = SSHHost(
        tmp_path_factory.mktemp("proxy-host"), host_keys.host_private, [host_keys.user_public]
    ).start()
    runtime = tmp_path_factory.mktemp("proxy-runtime")
    tunnels = TunnelManager(probe_interval=2.0, probe_timeout=2.0, runtime_dir=str(runtime))
    target = make_target(host, host_keys)
    forward = tunnels.open(INSTANCE_ID, target, remote_jupyter.port)
    yield tunnels, forward
    tunnels.close_all()
    host.stop()


@pytest.fixture
def remote(proxy_server, endpoints, remote_forward, remote_jupyter) -> RemoteJupyter:
    """The remote server registered behind the proxy, reached through the forward."""
    tunnels, forward = remote_forward
    assert forward.state == TunnelState.UP

    def lookup(instance_id: str) -> RemoteEndpoint | None:
        if instance_id != INSTANCE_ID:
            return endpoints.get(instance_id)
        current = tunnels.get(instance_id)
        if current is None:
            return None
        return RemoteEndpoint(current.local_port, remote_jupyter.token, state=current.state.value)

    proxy_server.web_app.settings[LOOKUP_SETTING] = lookup
    remote_jupyter.forward_port = forward.local_port  # type: ignore[attr-defined]
    return remote_jupyter


async def test_rest_works_without_the_remote_token(remote, local_url, jp_auth_header):
    # Given a browser that knows only the local server's credentials
    # When it calls the remote REST API through the proxy
    status = await fetch(local_url(INSTANCE_ID, "api/status"), headers=jp_auth_header)
    created = await fetch(
        local_url(INSTANCE_ID, "api/contents"),
        method="POST",
        body=json.dumps({"type": "notebook"}),
        headers=jp_auth_header,
    )
    # Then the calls succeed, and the remote token appears in no body and no header
    assert status.code == 200 and "started" in json.loads(status.body)
    assert created.code == 201, created.body
    for response in (status, created):
        assert remote.token not in response.body.decode()
        assert remote.token not in all_header_text(response)


async def test_lab_page_without_the_remote_token(remote, local_url, jp_auth_header):
    # Given the remote JupyterLab page embeds the token it is reached with
    direct = await fetch(
        remote.url(remote.forward_port, "lab"),
        headers={"Authorization": f"token {remote.token}"},
    )
    assert direct.code == 200 and remote.token in direct.body.decode()
    # When the browser loads it through the proxy
    page = await fetch(local_url(INSTANCE_ID, "lab"), headers=jp_auth_header)
    # Then the page is served without the token, and the remote's cookies stay behind
    assert page.code == 200
    assert remote.token not in page.body.decode()
    assert remote.token not in all_header_text(page)
    assert "jupyter-config-data" in page.body.decode()
    remote_cookies = [
        c
        for c in page.headers.get_list("Set-Cookie")
        if str(remote.forward_port) in c or "jupyter-ec2/remote" in c
    ]
    assert remote_cookies == []


async def test_remote_set_cookie_is_not_passed(remote, local_url, jp_auth_header):
    # Given the remote sets its login cookie on token-authenticated responses
    direct = await fetch(
        remote.url(remote.forward_port, "api/status"),
        headers={"Authorization": f"token {remote.token}"},
    )
    assert direct.headers.get_list("Set-Cookie")
    # When a logged-in browser (cookie only) calls through the proxy
    cookie = await login_cookie(local_url(INSTANCE_ID, "api/status"), jp_auth_header)
    response = await fetch(local_url(INSTANCE_ID, "api/status"), headers={"Cookie": cookie})
    # Then it works and no Set-Cookie comes back
    assert response.code == 200
    assert response.headers.get_list("Set-Cookie") == []


async def test_local_token_in_query_is_not_forwarded(remote, local_url, jp_serverapp):
    # Given a browser that authenticates to the local server with ?token=
    token = jp_serverapp.identity_provider.token
    # When it calls through the proxy (the remote would prefer ?token= to the header: 403)
    response = await fetch(local_url(INSTANCE_ID, f"api/status?token={token}"))
    # Then it works
    assert response.code == 200, response.body


async def test_file_names_with_hash_and_question_mark(remote, local_url, jp_auth_header):
    # Given a file whose name holds '#' and '?' on the remote
    (remote.root_dir / "a#b?c.txt").write_text("odd name")
    # When it is fetched through the proxy with its name encoded
    response = await fetch(local_url(INSTANCE_ID, "files/a%23b%3Fc.txt"), headers=jp_auth_header)
    # Then it is found
    assert response.code == 200, response.code
    assert response.body == b"odd name"


async def test_kernel_websocket_prints_42(remote, local_url, jp_auth_header):
    # Given a browser with local credentials only
    # When it starts a kernel and runs print(6*7) over the kernel websocket through the proxy
    output = await run_in_kernel(local_url(INSTANCE_ID), jp_auth_header, "print(6*7)")
    # Then it gets 42
    assert output == "42\n"


async def test_cross_site_websocket_is_refused(remote, local_url, jp_auth_header):
    # Given a logged-in browser on another site opening a websocket with the login cookie
    cookie = await login_cookie(local_url(INSTANCE_ID, "api/status"), jp_auth_header)
    request = httpclient.HTTPRequest(
        local_url(INSTANCE_ID, "api/events/subscribe", scheme="ws"),
        headers={"Cookie": cookie, "Origin": "http://evil.example"},
    )
    # When it connects / Then the local origin check refuses it
    with pytest.raises(httpclient.HTTPClientError) as caught:
        await websocket.websocket_connect(request)
    assert caught.value.code == 403


@pytest.mark.slow
async def test_websocket_messages_over_10_mib(remote, local_url, jp_auth_header):
    # Given a kernel reached through the proxy
    # When 12 MB go up in one message and 12 MB come back in one message
    code = "s = '" + "x" * 12_000_000 + "'\nprint(len(s)); print(s)"
    output = await run_in_kernel(
        local_url(INSTANCE_ID), jp_auth_header, code, max_message_size=1 << 30
    )
    # Then both pass (tornado's default limit is 10 MiB)
    assert output.startswith("12000000\n")
    assert len(output) == len("12000000\n") + 12_000_001


@pytest.mark.slow
async def test_large_download_streams_with_flat_memory(remote, local_url, jp_auth_header):
    # Given a 300 MB file on the remote
    size = 300 * 1024 * 1024
    with open(remote.root_dir / "big.bin", "wb") as f:
        f.truncate(size)
    received = 0
    peak = baseline = _rss()

    def on_chunk(chunk: bytes) -> None:
        nonlocal received, peak
        received += len(chunk)
        peak = max(peak, _rss())

    # When it is downloaded through the proxy (by a client that does not buffer it either)
    client = httpclient.AsyncHTTPClient(force_instance=True, max_body_size=1 << 40)
    try:
        response = await client.fetch(
            local_url(INSTANCE_ID, "files/big.bin"),
            headers=jp_auth_header,
            streaming_callback=on_chunk,
            request_timeout=300,
        )
    finally:
        client.close()
    # Then every byte arrives and this process (the local server) did not hold the file
    assert response.code == 200
    assert received == size
    assert peak - baseline < 64 * 1024 * 1024, (peak - baseline) / 1e6
    (remote.root_dir / "big.bin").unlink()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_forward_reconnecting_answers_503_then_recovers(
    remote, remote_forward, local_url, jp_auth_header
):
    # Given the forward drops its SSH connection
    tunnels, forward = remote_forward
    forward.reconnect()
    # When requests arrive meanwhile / Then each is either served or a clean 503
    codes = set()
    for _ in range(100):
        response = await fetch(local_url(INSTANCE_ID, "api/status"), headers=jp_auth_header)
        codes.add(response.code)
        if response.code == 200 and forward.state == TunnelState.UP and len(codes) > 1:
            break
        await asyncio.sleep(0.02)
    assert codes <= {200, 502, 503}, codes
    # And once the forward is up again, requests work
    assert forward.wait_for(TunnelState.UP, 30)
    response = await fetch(local_url(INSTANCE_ID, "api/status"), headers=jp_auth_header)
    assert response.code == 200


# -- bounds: what a hostile or merely chatty remote cannot do -----------------------------------


def _limits(app_settings: dict, **changes) -> ProxyLimits:
    limits = ProxyLimits(**changes)
    app_settings[LIMITS_SETTING] = limits
    return limits


async def test_compressed_html_is_refused_not_inflated(
    recorder, local_url, jp_auth_header, proxy_server
):
    # Given a remote that answers HTML with gzip although identity was asked (64 MiB inflated)
    # When the browser loads it through the proxy
    response = await fetch(local_url(ECHO_ID, "bomb.html"), headers=jp_auth_header)
    # Then it is refused with a message, nothing of it is passed on
    assert response.code == 502
    assert "compressed HTML" in json.loads(response.body)["message"]
    # And the server still answers at once
    status = await fetch(local_url(ECHO_ID, "api/status"), headers=jp_auth_header)
    assert status.code == 200


async def test_remote_cors_headers_are_dropped(recorder, local_url, jp_auth_header):
    # Given a remote that tries to open itself to every origin / When relayed
    response = await fetch(local_url(ECHO_ID, "cors"), headers=jp_auth_header)
    # Then no CORS header reaches the browser
    assert response.code == 200 and response.body == b"cors"
    assert "access-control" not in all_header_text(response).lower()


@pytest.mark.parametrize(
    "path", ["redirect-out", "redirect-local", "redirect-dots", "redirect-slashes"]
)
async def test_location_outside_the_instance_is_refused(recorder, local_url, jp_auth_header, path):
    # Given a remote redirecting outside its own path / When relayed / Then refused (502)
    response = await fetch(local_url(ECHO_ID, path), headers=jp_auth_header)
    assert response.code == 502, response.headers.get("Location")
    assert "Location" not in response.headers


async def test_location_inside_the_instance_is_rewritten(recorder, local_url, jp_auth_header):
    # Given remote redirects, relative and absolute to the forward's own address
    prefix = f"{LOCAL_BASE_URL}jupyter-ec2/remote/{ECHO_ID}/"
    relative = await fetch(local_url(ECHO_ID, "redirect-relative"), headers=jp_auth_header)
    absolute = await fetch(local_url(ECHO_ID, "redirect-absolute"), headers=jp_auth_header)
    # Then both become paths on the browser's origin, inside the instance
    assert relative.code == 302 and relative.headers["Location"] == prefix + "lab/tree"
    assert absolute.code == 302 and absolute.headers["Location"] == prefix + "lab?x=1"


async def test_local_token_never_reaches_a_log_line(
    proxy_server, endpoints, local_url, jp_serverapp, caplog
):
    # Given requests authenticated with ?token= that the proxy answers 404 and 503
    caplog.set_level(logging.DEBUG)
    token = jp_serverapp.identity_provider.token
    endpoints[ECHO_ID] = RemoteEndpoint(local_port=1, token="t", state="reconnecting")
    missing = await fetch(local_url("i-0000000000000dead", f"lab?token={token}"))
    down = await fetch(local_url(ECHO_ID, f"api/status?token={token}&x=1"))
    # Then the answers are as before, and no log line holds the token
    assert (missing.code, down.code) == (404, 503)
    assert "i-0000000000000dead" in caplog.text
    assert token not in caplog.text


class _RawFarEnd:
    """A TCP far end written byte by byte: it can stay silent, stall or overrun its framing."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.open = 0
        self.accepted = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        number = self.accepted
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                if self.behaviour == "silent":
                    await reader.read()  # until the proxy closes
                    break
                if self.behaviour == "stall":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
                    await writer.drain()
                    await reader.read()
                    break
                # "overrun": five bytes announced, a whole second response behind them
                body = f"conn{number}".encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
def raw_far_end(jp_asyncio_loop, endpoints):
    """``start(behaviour)`` → a :class:`_RawFarEnd` registered as ``ECHO_ID``."""
    started: list[_RawFarEnd] = []

    async def start(behaviour: str) -> _RawFarEnd:
        far = _RawFarEnd(behaviour)
        port = await far.start()
        endpoints[ECHO_ID] = RemoteEndpoint(local_port=port, token=REMOTE_TOKEN)
        started.append(far)
        return far

    yield start
    for far in started:
        jp_asyncio_loop.run_until_complete(far.stop())


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def test_a_silent_remote_gets_a_504_and_leaves_nothing_open(
    proxy_server, raw_far_end, local_url, jp_auth_header
):
    # Given a remote that accepts connections and never answers, and a 1 s first-byte timeout
    far = await raw_far_end("silent")
    _limits(proxy_server.web_app.settings, first_byte_timeout=1.0)
    # When the browser asks for a page
    response = await fetch(local_url(ECHO_ID, "lab"), headers=jp_auth_header)
    # Then it gets a 504 saying so, and the upstream connection is closed
    assert response.code == 504
    assert "did not answer within 1 s" in json.loads(response.body)["message"]
    assert await _until(lambda: far.open == 0), far.open


async def test_a_remote_that_stalls_mid_body_is_cut_off(
    proxy_server, raw_far_end, local_url, jp_auth_header
):
    # Given a remote that sends headers and part of the body, then nothing, and a 1 s idle limit
    far = await raw_far_end("stall")
    _limits(proxy_server.web_app.settings, idle_timeout=1.0)
    # When the browser downloads it
    # Then the response ends, incomplete, instead of hanging, and upstream is closed
    with pytest.raises(httpclient.HTTPClientError) as cut:
        await fetch(local_url(ECHO_ID, "big"), headers=jp_auth_header, request_timeout=60)
    assert cut.value.code == 599 and "closed" in str(cut.value).lower()
    assert await _until(lambda: far.open == 0), far.open


async def test_a_browser_that_leaves_closes_the_upstream(
    proxy_server, raw_far_end, local_url, jp_http_port, jp_auth_header
):
    # Given a silent remote and a browser that sends a request, then goes away
    far = await raw_far_end("silent")
    _limits(proxy_server.web_app.settings, first_byte_timeout=300.0)
    path = local_url(ECHO_ID, "lab").split(str(jp_http_port), 1)[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
    auth = jp_auth_header["Authorization"]
    host = f"127.0.0.1:{jp_http_port}"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n".encode())
    await writer.drain()
    assert await _until(lambda: far.open == 1)
    # When the browser closes its connection
    writer.close()
    # Then the proxy closes the upstream one long before any timeout
    assert await _until(lambda: far.open == 0), far.open


async def test_bytes_past_the_framing_never_become_the_next_answer(
    proxy_server, raw_far_end, local_url, jp_auth_header
):
    # Given a remote whose answers carry a second, unasked-for response behind their body
    far = await raw_far_end("overrun")
    # When two requests follow each other
    first = await fetch(local_url(ECHO_ID, "a"), headers=jp_auth_header)
    second = await fetch(local_url(ECHO_ID, "b"), headers=jp_auth_header)
    # Then each gets its own answer: the connection out of step was not reused
    assert first.body == b"conn1"
    assert second.body == b"conn2"
    assert far.accepted == 2


class _Flood(websocket.WebSocketHandler):
    """A remote websocket that floods its client, or sends one message of a given size."""

    def initialize(self, stats: dict) -> None:
        self.stats = stats

    def check_origin(self, origin: str) -> bool:
        return True

    async def open(self, *args) -> None:
        size = int(self.get_argument("one", "0"))
        if size:
            await self.write_message(b"x" * size, binary=True)
            return
        piece = b"x" * 65536
        try:
            while self.ws_connection is not None and self.stats["sent"] < 1 << 30:
                await self.write_message(piece, binary=True)
                self.stats["sent"] += len(piece)
        except websocket.WebSocketClosedError:
            pass


@pytest.fixture
def flood(jp_asyncio_loop, endpoints):
    """A flooding websocket far end registered as ``ECHO_ID``; yields its stats."""
    stats = {"sent": 0}
    app = web.Application([(r"/.*", _Flood, {"stats": stats})])
    sock, port = bind_unused_port()

    async def start() -> httpserver.HTTPServer:
        server = httpserver.HTTPServer(app)
        server.add_sockets([sock])
        return server

    server = jp_asyncio_loop.run_until_complete(start())
    endpoints[ECHO_ID] = RemoteEndpoint(local_port=port, token=REMOTE_TOKEN)
    yield stats
    server.stop()
    jp_asyncio_loop.run_until_complete(server.close_all_connections())


def _proxy_log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "jupyter-ec2 proxy" in r.getMessage()]


async def test_a_websocket_flood_to_a_client_that_does_not_read_is_held_back(
    proxy_server, flood, local_url, jp_auth_header, caplog
):
    # Given a remote that writes as fast as it can, and a browser that reads nothing
    caplog.set_level(logging.INFO)
    request = httpclient.HTTPRequest(
        local_url(ECHO_ID, "api/flood", scheme="ws"), headers=jp_auth_header
    )
    client = await websocket.websocket_connect(request)  # read_message is never called
    # When it has flooded for a while
    await asyncio.sleep(3)
    # Then the remote was held back by back-pressure: only what windows and socket buffers
    # hold left it (without back-pressure it is hundreds of MB by now), and nothing was logged
    assert flood["sent"] < 48 * 1024 * 1024, flood["sent"] / 1e6
    assert _proxy_log_lines(caplog) == []
    client.close()


async def test_a_message_over_the_cap_closes_with_1009_and_one_line(
    proxy_server, flood, local_url, jp_auth_header, caplog
):
    # Given a 1 MiB cap and a remote that sends one 3 MiB message
    caplog.set_level(logging.INFO)
    _limits(proxy_server.web_app.settings, ws_max_pending=1024 * 1024)
    request = httpclient.HTTPRequest(
        local_url(ECHO_ID, f"api/big?one={3 * 1024 * 1024}", scheme="ws"), headers=jp_auth_header
    )
    client = await websocket.websocket_connect(request)
    # When the browser reads / Then the socket closes with 1009, and one line says why
    assert await asyncio.wait_for(client.read_message(), 20) is None
    assert client.close_code == 1009
    lines = _proxy_log_lines(caplog)
    assert len(lines) == 1 and "exceeds the relay's cap" in lines[0], lines
