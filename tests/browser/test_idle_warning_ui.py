"""The warning before an idle stop, in Chromium on the simulated cloud: "Keep running 1 h".

A real instance comes up (moto, an sshd host, provisioning, the real watchdog with an idle
time of 5 minutes and the harness's harmless stop command), so it is due to stop within the
warning's 10 minutes from the start; the notification's button postpones the stop on the
instance.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from .conftest import SimLab

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


def test_the_idle_warning_keeps_the_instance_running_for_an_hour(
    jp_ec2_page: Page, jp_ec2_sim_lab: SimLab, jp_ec2_artifacts: Path
):
    page, server = jp_ec2_page, jp_ec2_sim_lab.server
    # Given an instance that stops itself after 5 idle minutes, ready and idle
    status, inst = server.api(
        "POST", "instances", {"profile": "cpu", "overrides": {"idle_stop_minutes": 5}}
    )
    assert status == 202, inst
    iid = inst["id"]
    deadline = time.monotonic() + 240
    while True:
        _, inst = server.api("GET", f"instances/{iid}")
        assert inst["phase"] != "failed", inst["error"]
        if inst["idle"] and inst["idle"]["seconds_left"]:
            break
        assert time.monotonic() < deadline, inst
        time.sleep(0.5)
    assert inst["idle"]["seconds_left"] <= 600
    # When JupyterLab is open
    page.goto(server.url("lab?reset"))
    expect(page.locator("#jp-main-dock-panel")).to_be_visible()
    # Then it warns that the instance stops itself soon, with "Keep running 1 h"
    warning = page.locator(".Toastify__toast", has_text="stops itself in about")
    expect(warning).to_be_visible(timeout=60_000)
    expect(warning).to_contain_text(iid)
    page.screenshot(path=str(jp_ec2_artifacts / "idle-warning.png"))
    # When the button is pressed
    warning.get_by_role("button", name="Keep running 1 h").click()
    # Then the instance's stop moved an hour on, and the warning went away
    expect(page.locator(".Toastify__toast", has_text="another hour")).to_be_visible()
    _, inst = server.api("GET", f"instances/{iid}")
    assert inst["idle"]["seconds_left"] > 3500
    expect(warning).to_have_count(0, timeout=30_000)
    server.api("DELETE", f"instances/{iid}")
