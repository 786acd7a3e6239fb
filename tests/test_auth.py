"""Every route of the extension refuses a caller without credentials."""

from __future__ import annotations

import re

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_ec2.app import EC2Launcher

SAMPLE_ID = "i-0123456789abcdef0"
VERBS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _sample_group(match: re.Match) -> str:
    body = match.group(1)
    if re.fullmatch(r"[a-z]+(\|[a-z]+)+", body):
        return body.split("|")[0]  # an action: start|stop|reconnect
    if body == ".*":
        return "api/status"  # a path under a remote notebook
    return SAMPLE_ID


def _sample_path(pattern: str) -> str:
    """A concrete path matching a route pattern (ids, actions and remote paths filled in)."""
    path = re.sub(r"\((?:\?P<\w+>)?([^)]*)\)", _sample_group, pattern)
    return path.lstrip("/").replace("\\", "").rstrip("$")


ROUTES = [_sample_path(route[0]) for route in EC2Launcher.routes]


def test_route_table_is_not_empty():
    # Given the extension's route table / Then it has the API routes this test walks
    assert any(path.endswith("api/profiles") for path in ROUTES)


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("path", ROUTES)
async def test_route_refuses_anonymous(jp_fetch, path, verb):
    # Given a request to an extension route with no token and no cookie
    body = b"{}" if verb in ("POST", "PUT", "PATCH") else None
    # When it is sent
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch(
            path,
            method=verb,
            body=body,
            headers={"Authorization": ""},
            follow_redirects=False,
            allow_nonstandard_methods=True,
        )
    # Then it is refused: 403, a redirect to the login page, or 405 for a verb the route lacks
    assert caught.value.code in (302, 403, 405), caught.value
    if caught.value.code == 302:
        assert "/login" in caught.value.response.headers["Location"]
    if caught.value.code == 405:
        assert verb not in _verbs_of(path)


def _verbs_of(path: str) -> set[str]:
    for pattern, handler, *_ in EC2Launcher.routes:
        if _sample_path(pattern) == path:
            return {
                v
                for v in VERBS
                if getattr(handler, v.lower(), None) is not None and v.lower() in handler.__dict__
            }
    return set()


async def test_route_with_token_is_served(jp_fetch):
    # Given the same profiles route / When asked with the server's token / Then it answers 200
    response = await jp_fetch("jupyter-ec2", "api", "profiles")
    assert response.code == 200
