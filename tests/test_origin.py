"""Instance origins (``http://<id>.localhost:<port>/``) and the handoff, in a real jupyter_server.

The local server is pytest-jupyter's, with the proxy, the handoff routes and the instance
origins installed as the extension installs them, and a recording Tornado app as the far end
(the one of ``test_proxy``). Requests for an instance origin are sent to 127.0.0.1 with that
origin's ``Host`` header, as a browser sends them once it has resolved ``*.localhost`` to
loopback.
"""

# ruff: noqa: F811 - fixtures imported from test_proxy are arguments here
from __future__ import annotations

import json
import logging
import re
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import pytest
from test_proxy import (  # noqa: F401 - endpoints, jp_base_url and recorder are fixtures
    ECHO_ID,
    LOCAL_BASE_URL,
    endpoints,
    fetch,
    jp_base_url,
    login_cookie,
    recorder,
)

from jupyter_ec2.origin import (
    HANDOFF_SECONDS,
    SESSION_COOKIE,
    InstanceOrigins,
    install_instance_origins,
    local_origin_handlers,
    remote_url,
    resolve_mode,
)
from jupyter_ec2.proxy import LOOKUP_SETTING, close_upstream_pool, remote_handlers

OTHER_ID = "i-0000000000000abcd"


@pytest.fixture
def jp_server_config() -> dict:
    """Authentication on; the extension itself is not loaded (its manager is not needed)."""
    return {"ServerApp": {"allow_unauthenticated_access": False}}


@pytest.fixture
def origins(jp_serverapp, http_server, endpoints, jp_http_port):
    """The local server with the proxy, the handoff and instance origins in separate mode."""
    app = jp_serverapp.web_app
    base = jp_serverapp.base_url
    app.add_handlers(".*$", remote_handlers(base) + local_origin_handlers(base))
    app.settings[LOOKUP_SETTING] = endpoints.get
    found = InstanceOrigins("separate", port=jp_http_port, base_url=base)
    install_instance_origins(app, found)
    yield found
    close_upstream_pool(app.settings)


@pytest.fixture
def local(jp_http_port) -> str:
    """The local origin and base_url."""
    return f"http://127.0.0.1:{jp_http_port}{LOCAL_BASE_URL}"


def on_instance(jp_http_port: int, instance_id: str = ECHO_ID) -> dict:
    """Headers that put a request on an instance's origin."""
    return {"Host": f"{instance_id}.localhost:{jp_http_port}"}


def cookies_of(response) -> dict[str, str]:
    """The cookies a response sets, name → value."""
    jar: dict[str, str] = {}
    for header in response.headers.get_list("Set-Cookie"):
        for name, morsel in SimpleCookie(header).items():
            jar[name] = morsel.value
    return jar


async def handoff(local: str, jp_http_port: int, cookie: str) -> tuple[dict[str, str], object]:
    """Open ECHO_ID from the local session and redeem the code: (the origin's cookies, answer)."""
    opened = await fetch(f"{local}jupyter-ec2/open/{ECHO_ID}", headers={"Cookie": cookie})
    assert opened.code == 302, opened.body
    target = urlsplit(opened.headers["Location"])
    assert target.hostname == f"{ECHO_ID}.localhost" and target.port == jp_http_port
    url = f"http://127.0.0.1:{jp_http_port}{target.path}?{target.query}"
    redeemed = await fetch(url, headers=on_instance(jp_http_port))
    return cookies_of(redeemed), (redeemed, url)


# -- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "ip", "hub", "sock", "expected"),
    [
        ("auto", "localhost", False, "", "separate"),
        ("auto", "127.0.0.1", False, "", "separate"),
        ("auto", "::1", False, "", "separate"),
        ("auto", "0.0.0.0", False, "", "same"),
        ("auto", "", False, "", "same"),
        ("auto", "10.1.2.3", False, "", "same"),
        ("auto", "127.0.0.1", True, "", "same"),
        ("auto", "localhost", False, "/tmp/j.sock", "same"),
        ("separate", "0.0.0.0", False, "", "separate"),
        ("same", "127.0.0.1", False, "", "same"),
    ],
)
def test_auto_picks_separate_on_loopback_only(mode, ip, hub, sock, expected):
    # Given a configured mode and where the server listens / Then the resolved mode
    assert resolve_mode(mode, ip, jupyterhub=hub, sock=sock) == expected


def test_url_is_absolute_on_its_own_origin_only_in_separate_mode():
    # Given both modes / When the API url is computed / Then separate is absolute, same a path
    separate = InstanceOrigins("separate", port=8888, base_url="/b/")
    same = InstanceOrigins("same", port=8888, base_url="/b/")
    assert remote_url(ECHO_ID, "/b/", separate) == (
        f"http://{ECHO_ID}.localhost:8888/b/jupyter-ec2/remote/{ECHO_ID}/lab"
    )
    assert remote_url(ECHO_ID, "/b/", same) == f"/b/jupyter-ec2/remote/{ECHO_ID}/lab"
    assert remote_url(ECHO_ID, "/b/", None) == f"/b/jupyter-ec2/remote/{ECHO_ID}/lab"


def test_handoff_codes_are_single_use_short_lived_and_bound(monkeypatch):
    # Given minted codes
    origins = InstanceOrigins("separate", port=1)
    code = origins.mint(ECHO_ID, "/x", "http://localhost:1")
    # When redeemed for another instance / Then refused, and the code is used up
    assert origins.redeem(code, OTHER_ID) is None
    assert origins.redeem(code, ECHO_ID) is None
    # When a fresh one is redeemed twice / Then only the first time counts
    code = origins.mint(ECHO_ID, "/x", "http://localhost:1")
    assert origins.redeem(code, ECHO_ID).next_path == "/x"
    assert origins.redeem(code, ECHO_ID) is None
    # When one is redeemed after its lifetime / Then refused
    code = origins.mint(ECHO_ID, "/x", "http://localhost:1")
    import jupyter_ec2.origin as origin_module

    later = origin_module.time.monotonic() + HANDOFF_SECONDS + 1
    monkeypatch.setattr(origin_module.time, "monotonic", lambda: later)
    assert origins.redeem(code, ECHO_ID) is None


def test_sessions_are_bound_to_their_instance_and_xsrf():
    # Given a session for one instance / Then it is valid only there, with its own XSRF token
    origins = InstanceOrigins("separate", port=1)
    value = origins.session_value(ECHO_ID, "x1")
    assert origins.check_session(value, ECHO_ID, "x1")
    assert not origins.check_session(value, OTHER_ID, "x1")
    assert not origins.check_session(value, ECHO_ID, "x2")
    assert not origins.check_session(value + "0", ECHO_ID, "x1")
    assert not InstanceOrigins("separate", port=1).check_session(value, ECHO_ID, "x1")


@pytest.mark.parametrize(
    "next_path",
    [
        "//evil.example/x",
        "http://evil.example/",
        "/user/alice/jupyter-ec2/remote/i-00000000000000ec0/../../api/contents",
        "/user/alice/jupyter-ec2/remote/i-00000000000000ec0/%2e%2e/x",
        "/user/alice/jupyter-ec2/remote/i-0000000000000abcd/lab",
        "/\\evil.example",
        "/user/alice/api/contents",
    ],
)
def test_next_never_leaves_the_instance(next_path):
    # Given a handoff asked to land outside the instance / Then it lands on the instance's lab
    origins = InstanceOrigins("separate", port=1, base_url=LOCAL_BASE_URL)
    assert origins.safe_next(ECHO_ID, next_path) == (
        f"{LOCAL_BASE_URL}jupyter-ec2/remote/{ECHO_ID}/lab"
    )


# -- the handoff, end to end in a server ------------------------------------------------------


async def test_handoff_gives_the_instance_origin_its_own_session(
    recorder, origins, local, jp_http_port, jp_auth_header
):
    # Given a browser logged in to the local server
    cookie = await login_cookie(f"{local}api/status", jp_auth_header)
    # When it opens the instance and redeems the code on the instance's origin
    jar, (redeemed, url) = await handoff(local, jp_http_port, cookie)
    # Then it lands in the notebook with a host-only HttpOnly session and this origin's _xsrf
    assert redeemed.code == 302
    assert redeemed.headers["Location"] == f"{LOCAL_BASE_URL}jupyter-ec2/remote/{ECHO_ID}/lab"
    session_header = next(
        h for h in redeemed.headers.get_list("Set-Cookie") if h.startswith(SESSION_COOKIE)
    )
    assert "httponly" in session_header.lower() and "domain" not in session_header.lower()
    assert set(jar) >= {SESSION_COOKIE, "_xsrf"}
    # And the code cannot be used twice
    again = await fetch(url, headers=on_instance(jp_http_port))
    assert again.code == 403
    # When the instance origin is used with that session
    session = f"{SESSION_COOKIE}={jar[SESSION_COOKIE]}; _xsrf={jar['_xsrf']}"
    headers = {**on_instance(jp_http_port), "Cookie": session}
    page = await fetch(f"{local}jupyter-ec2/remote/{ECHO_ID}/api/status", headers=headers)
    # Then the far end answers, and it saw neither the session nor the XSRF cookie
    assert page.code == 200, page.body
    forwarded = {k.lower(): v for k, v in json.loads(page.body)["headers"].items()}
    assert "cookie" not in forwarded and forwarded["authorization"].startswith("token remote-")
    # And a write needs this origin's XSRF token
    url = f"{local}jupyter-ec2/remote/{ECHO_ID}/api/contents/x"
    refused = await fetch(url, method="PUT", body="{}", headers=headers)
    assert refused.code == 403
    ok = await fetch(url, method="PUT", body="{}", headers={**headers, "X-XSRFToken": jar["_xsrf"]})
    assert ok.code == 200


async def test_local_credentials_are_worthless_on_an_instance_origin(
    recorder, origins, local, jp_http_port, jp_auth_header, jp_serverapp, tmp_path
):
    # Given the local token and login cookie, sent to an instance's origin
    cookie = await login_cookie(f"{local}api/status", jp_auth_header)
    token = jp_serverapp.identity_provider.token
    credentials = [
        {"Authorization": f"token {token}"},
        {"Cookie": cookie},
        {"Cookie": f"{cookie}; _xsrf=x", "X-XSRFToken": "x"},
    ]
    for extra in credentials:
        headers = {**on_instance(jp_http_port), **extra}
        # When they try the local API: contents, kernels, the jupyter-ec2 API
        put = await fetch(
            f"{local}api/contents/pwned.txt?token={token}",
            method="PUT",
            body=json.dumps({"type": "file", "format": "text", "content": "x"}),
            headers=headers,
        )
        kernel = await fetch(f"{local}api/kernels", method="POST", body="{}", headers=headers)
        listing = await fetch(f"{local}jupyter-ec2/api/instances", headers=headers)
        status = await fetch(f"{local}api/status", headers=headers)
        # Then every one is refused, and the remote relay wants its own session
        assert {put.code, kernel.code, listing.code, status.code} == {404}
        remote = await fetch(
            f"{local}jupyter-ec2/remote/{ECHO_ID}/api/contents",
            method="POST",
            headers=headers,
            body="{}",
        )
        assert remote.code == 403
    # And nothing was written or started locally, nor reached the far end
    assert not (tmp_path / "pwned.txt").exists()
    assert not any(p.name == "pwned.txt" for p in tmp_path.rglob("pwned.txt"))
    assert jp_serverapp.kernel_manager.list_kernel_ids() == []
    assert recorder.log == []


async def test_an_instance_origin_serves_only_its_own_instance(
    recorder, origins, endpoints, local, jp_http_port, jp_auth_header
):
    # Given a session on ECHO_ID's origin, and a second instance
    cookie = await login_cookie(f"{local}api/status", jp_auth_header)
    jar, _ = await handoff(local, jp_http_port, cookie)
    endpoints[OTHER_ID] = endpoints[ECHO_ID]
    session = f"{SESSION_COOKIE}={jar[SESSION_COOKIE]}; _xsrf={jar['_xsrf']}"
    # When ECHO_ID's origin asks for the other instance's path / Then 404
    headers = {**on_instance(jp_http_port), "Cookie": session}
    cross = await fetch(f"{local}jupyter-ec2/remote/{OTHER_ID}/api/status", headers=headers)
    assert cross.code == 404
    # When the other origin is used with ECHO_ID's session / Then it has no session there
    headers = {**on_instance(jp_http_port, OTHER_ID), "Cookie": session}
    other = await fetch(f"{local}jupyter-ec2/remote/{OTHER_ID}/api/status", headers=headers)
    assert other.code == 302 and "/jupyter-ec2/open/" in other.headers["Location"]
    assert recorder.log == []


async def test_without_a_session_a_page_goes_through_a_new_handoff(
    recorder, origins, local, jp_http_port
):
    # Given no session on the instance's origin
    url = f"{local}jupyter-ec2/remote/{ECHO_ID}/lab/tree?x=1"
    # When a page is asked for / Then it is sent to the local handoff, asking to come back
    page = await fetch(url, headers=on_instance(jp_http_port))
    assert page.code == 302
    location = page.headers["Location"]
    assert location.startswith(f"http://localhost:{jp_http_port}{LOCAL_BASE_URL}jupyter-ec2/open/")
    assert f"next={LOCAL_BASE_URL}jupyter-ec2/remote/{ECHO_ID}/lab/tree" in location
    # When a websocket or a write is tried / Then refused outright
    post = await fetch(url, method="POST", body="{}", headers=on_instance(jp_http_port))
    assert post.code == 403
    assert recorder.log == []


async def test_local_origin_keeps_remote_pages_off_it_in_separate_mode(
    recorder, origins, local, jp_http_port, jp_auth_header
):
    # Given a browser logged in locally (a cookie), and a program with the local token
    cookie = await login_cookie(f"{local}api/status", jp_auth_header)
    url = f"{local}jupyter-ec2/remote/{ECHO_ID}/lab"
    # When the browser asks the local path / Then it is sent to the handoff, not served
    page = await fetch(url, headers={"Cookie": cookie})
    assert page.code == 302
    assert page.headers["Location"].startswith(f"{LOCAL_BASE_URL}jupyter-ec2/open/{ECHO_ID}")
    post = await fetch(
        url, method="POST", body="{}", headers={"Cookie": f"{cookie}; _xsrf=a", "X-XSRFToken": "a"}
    )
    assert post.code == 403
    assert recorder.log == []
    # When a program sends the token in a header (no page can) / Then it is still relayed
    program = await fetch(url, headers=jp_auth_header)
    assert program.code == 200
    assert len(recorder.log) == 1


async def test_handoff_codes_never_reach_the_log(
    recorder, origins, local, jp_http_port, jp_auth_header, caplog
):
    # Given a handoff / When it runs with the server's logging at debug
    caplog.set_level(logging.DEBUG)
    cookie = await login_cookie(f"{local}api/status", jp_auth_header)
    _, (_, url) = await handoff(local, jp_http_port, cookie)
    code = re.search(r"code=([^&]+)", url).group(1)
    # Then no log line shows the code
    assert code not in caplog.text
