"""The attack of issue #18, in Chromium: script on a page the instance serves reaches back.

A real instance comes up on the simulated cloud (moto, a private sshd, a remote JupyterLab on
this host) and the browser opens its ``url`` as "Open" does. The remote page then runs script
— what a notebook output, a remote lab extension or anything holding the remote port could run
— that tries to read the local ``_xsrf`` cookie, write a file through the local contents API,
start a local kernel and list the jupyter-ec2 instances. With ``remote_origin = "auto"`` on a
loopback server the page lives on ``http://<id>.localhost:<port>/``: every attempt fails, which
the test checks in the browser and on the local server (no file, no kernel). The remote
JupyterLab itself still works: ``print(6*7)`` gives ``42``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest
from test_instances_ui import wait_until, watch_kernel_socket

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from .conftest import LabServer, SimLab

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("moto") is None,
        reason="the simulated cloud needs moto: pip install -e '.[sim]'",
    ),
    pytest.mark.skipif(
        not os.path.exists("/usr/sbin/sshd"),
        reason="the instance hosts need OpenSSH's sshd: apt-get install openssh-server",
    ),
]

expect = pytest.importorskip("playwright.sync_api").expect

READY_TIMEOUT = 180.0

#: What a hostile page served by the instance runs. ``local`` is the local server's base URL.
ATTACK = """
async ({local}) => {
  const out = {cookie: document.cookie};
  const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
  const json = {'Content-Type': 'application/json', 'X-XSRFToken': xsrf};
  const file = JSON.stringify({type: 'file', format: 'text', content: 'pwned'});
  async function attempt(name, url, init) {
    try {
      const r = await fetch(url, {credentials: 'include', ...init});
      out[name] = r.type === 'opaque' ? 'opaque' : r.status;
    } catch (e) {
      out[name] = 'blocked';
    }
  }
  // Straight at the local origin, as a page would (CORS, and cookies not sent cross-site).
  await attempt('put', local + 'api/contents/pwned.txt',
                {method: 'PUT', headers: json, body: file});
  await attempt('kernel', local + 'api/kernels', {method: 'POST', headers: json, body: '{}'});
  await attempt('ec2', local + 'jupyter-ec2/api/instances', {});
  // A "simple" request needs no preflight: it is sent, the answer is unreadable.
  await attempt('kernel_no_cors', local + 'api/kernels',
                {method: 'POST', mode: 'no-cors', body: '{}'});
  // The same paths on the page's own origin (the local server answers this name too).
  await attempt('put_here', '/api/contents/pwned.txt',
                {method: 'PUT', headers: json, body: file});
  await attempt('kernel_here', '/api/kernels', {method: 'POST', headers: json, body: '{}'});
  await attempt('ec2_here', '/jupyter-ec2/api/instances', {});
  return out;
}
"""


def local_api(server: LabServer, path: str) -> tuple[int, object]:
    """GET ``{base_url}<path>`` on the local server with its token."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(  # noqa: S310 (an http://127.0.0.1 URL we built)
        f"{server.base_url}{path}", headers={"Authorization": f"token {server.token}"}
    )
    with opener.open(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def launch_ready(server: LabServer) -> dict:
    """Launch the cpu profile through the API and wait until the instance is ready."""
    status, instance = server.api("POST", "instances", {"profile": "cpu"})
    assert status == 202, instance
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        status, instance = server.api("GET", f"instances/{instance['id']}")
        if instance["phase"] == "ready":
            return instance
        assert instance["phase"] != "failed", instance
        time.sleep(1)
    raise AssertionError(f"not ready in {READY_TIMEOUT:.0f} s: {instance}\n{server.log_tail()}")


def test_a_page_served_by_the_instance_cannot_act_with_the_local_session(
    jp_ec2_sim_lab: SimLab, jp_ec2_page: Page, jp_ec2_artifacts
):
    server = jp_ec2_sim_lab.server
    page = jp_ec2_page
    # Given a user logged in to the local JupyterLab (its cookies on 127.0.0.1)
    page.goto(server.url("lab?reset"))
    expect(page.locator("#jp-main-dock-panel")).to_be_visible()
    local_xsrf = next(
        c["value"] for c in page.context.cookies(server.base_url) if c["name"] == "_xsrf"
    )
    # And a ready instance, whose url is on an origin of its own ("auto", loopback server)
    instance = launch_ready(server)
    instance_id = instance["id"]
    port = server.base_url.rsplit(":", 1)[1].strip("/")
    assert instance["url"] == (
        f"http://{instance_id}.localhost:{port}/jupyter-ec2/remote/{instance_id}/lab"
    )
    _, kernels_before = local_api(server, "api/kernels")

    # When the user opens it (what "Open" does: a new tab on the url, through the handoff)
    remote = page.context.new_page()
    kernel_frames: list[str] = []
    remote.on("websocket", lambda ws: watch_kernel_socket(ws, kernel_frames))
    remote.goto(instance["url"])
    # Then the remote JupyterLab shows, on the instance's origin, the handoff code gone
    expect(remote.locator("#jp-main-dock-panel")).to_be_visible(timeout=90_000)
    assert remote.url.startswith(f"http://{instance_id}.localhost:{port}/jupyter-ec2/remote/")
    assert "code=" not in remote.url

    # When script on that page attacks the local server
    result = remote.evaluate(ATTACK, {"local": server.base_url})
    # Then it cannot read the local _xsrf cookie (only its own origin's)
    assert local_xsrf not in result["cookie"], result
    # And every request to the local origin failed or went unanswered
    for name in ("put", "kernel", "ec2"):
        assert result[name] in ("blocked", 403, 404), (name, result)
    assert result["kernel_no_cors"] == "opaque"
    # And the local server's paths are not served on the instance's origin
    for name in ("put_here", "kernel_here", "ec2_here"):
        assert result[name] == 404, (name, result)
    # And on the local server's side: no file, no kernel
    assert not (server.root_dir / "pwned.txt").exists()
    _, kernels_after = local_api(server, "api/kernels")
    assert kernels_after == kernels_before

    # When the user runs print(6*7) in a new notebook on the remote JupyterLab
    remote.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    kernel_status = remote.locator(".jp-Notebook-ExecutionIndicator")
    expect(kernel_status).to_have_attribute("data-status", "idle", timeout=90_000)
    # JupyterLab shows "idle" before the kernel's websocket is up (NOTES.md): wait for it.
    wait_until(remote, lambda: bool(kernel_frames), 60, "the kernel websocket is silent")
    remote.locator(".jp-Cell .jp-InputArea-editor .cm-content").first.click()
    remote.keyboard.type("print(6*7)")
    remote.keyboard.press("Shift+Enter")
    # Then the answer is 42, and that kernel is the instance's, not a local one
    output = remote.locator(".jp-Cell .jp-OutputArea-output").first
    expect(output).to_have_text("42", timeout=60_000)
    _, kernels_now = local_api(server, "api/kernels")
    assert kernels_now == kernels_before
    assert re.search(r"\.localhost:\d+/jupyter-ec2/remote/", remote.url)
    remote.screenshot(path=str(jp_ec2_artifacts / "remote-own-origin.png"))
    remote.close()
