"""The Resize dialog in Chromium, on the simulated cloud with sshd instance hosts.

Real parts: JupyterLab with the built extension, Debian's Chromium, moto behind the strict
front, an OpenSSH sshd per instance and the real provisioning. The simulated cloud has no Price
List API, so the dialog must say a price is unknown rather than show $0.
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

PANEL = ".jp-ec2-panel"


def _wait(server, instance_id: str, phase: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, inst = server.api("GET", f"instances/{instance_id}")
        assert status == 200, inst
        if inst["phase"] == phase:
            return inst
        assert inst["phase"] != "failed", inst
        assert time.monotonic() < deadline, inst
        time.sleep(0.5)


@pytest.mark.timeout(900)
def test_the_resize_dialog_lists_types_and_resizes(jp_ec2_page: Page, jp_ec2_sim_lab: SimLab):
    page, server = jp_ec2_page, jp_ec2_sim_lab.server
    # Given a ready t3.medium and the EC2 panel open
    status, inst = server.api("POST", "instances", {"profile": "cpu"})
    assert status == 202, inst
    iid = inst["id"]
    try:
        _wait(server, iid, "ready")
        page.goto(server.url("lab?reset"))
        expect(page.locator("#jp-main-dock-panel")).to_be_visible()
        page.keyboard.press("Control+Shift+C")
        page.locator(".lm-CommandPalette-input").fill("EC2 instances")
        page.locator(".lm-CommandPalette-item", has_text="EC2 instances").first.click()
        card = page.locator(f'{PANEL} [data-testid="ec2-instance"][data-instance-id="{iid}"]')
        expect(card.locator('[data-testid="ec2-phase"]')).to_have_text("Ready", timeout=60_000)

        # When the user clicks Resize on its card
        card.locator('[data-action="resize"]').click()
        dialog = page.locator(".jp-Dialog", has=page.locator('[data-testid="ec2-resize"]'))
        expect(dialog).to_be_visible(timeout=60_000)
        # Then compatible types are offered with their price (unknown here), and arm64 types
        # are listed as excluded, saying why
        options = dialog.locator('[data-testid="ec2-resize-option"]')
        expect(options.first).to_be_visible()
        large = dialog.locator("li", has=page.locator('input[value="t3.large"]'))
        expect(large).to_contain_text("price unknown")
        excluded = dialog.locator('[data-testid="ec2-resize-excluded"][data-reason="architecture"]')
        expect(excluded.first).to_contain_text("arm64", use_inner_text=False)

        # When t3.large is chosen and Resize pressed
        dialog.locator('input[value="t3.large"]').check()
        dialog.get_by_role("button", name="Resize").click()
        # Then the card follows it back to ready as a t3.large
        expect(card.locator('[data-testid="ec2-phase"]')).not_to_have_text("Ready", timeout=30_000)
        expect(card.locator('[data-testid="ec2-phase"]')).to_have_text("Ready", timeout=240_000)
        expect(card.locator('[data-fact="instance-type"] dd')).to_have_text("t3.large")
        cloud = jp_ec2_sim_lab.cloud
        described = cloud.client().describe_instances(InstanceIds=[iid])
        assert described["Reservations"][0]["Instances"][0]["InstanceType"] == "t3.large"
    finally:
        server.api("DELETE", f"instances/{iid}")
