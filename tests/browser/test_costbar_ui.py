"""The status-bar item "N running · $x/h" in Chromium, on the simulated cloud.

The simulated cloud has no Price List API, so a running instance's price is unknown here and
the item must say so (``$?/h``), never ``$0.00/h``.
"""

from __future__ import annotations

import importlib.util
import os
import time
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


def test_the_status_bar_counts_running_instances_and_says_when_a_price_is_unknown(
    jp_ec2_page: Page, jp_ec2_sim_lab: SimLab
):
    page, server = jp_ec2_page, jp_ec2_sim_lab.server
    # Given JupyterLab open with no instance running, refreshing the instances every 2 s (the
    # user setting; the default 30 s would only make each step below wait longer: the launch
    # and the termination come through the REST API, so the page does not follow them fast)
    server.set_user_settings({"refreshSeconds": 2})
    try:
        page.goto(server.url("lab?reset"))
        expect(page.locator("#jp-main-dock-panel")).to_be_visible()
        item = page.locator(".jp-ec2-costbar")
        expect(item).to_have_text("EC2: none running", timeout=30_000)
        # When an instance is launched and runs
        status, inst = server.api("POST", "instances", {"profile": "cpu"})
        assert status == 202, inst
        # Then the item counts it, with an unknown price (no Price List here), never $0.00
        expect(item).to_have_text("1 running · $?/h", timeout=120_000)
        server.api("DELETE", f"instances/{inst['id']}")
        deadline = time.monotonic() + 60
        while server.api("GET", f"instances/{inst['id']}")[1]["phase"] != "terminated":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        expect(item).to_have_text("EC2: none running", timeout=60_000)
    finally:
        server.set_user_settings({})
