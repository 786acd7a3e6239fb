"""Saved images in Chromium, on the simulated cloud: save from a card, list, launch from, delete.

A real instance comes up (moto, a private sshd on loopback, real provisioning), is stopped, and
is saved as an image from its card's "Save as image" dialog; the panel's Images section then
shows it, "Launch from image" launches an instance whose image is the saved one, and "Delete"
removes the image and its snapshot from the simulated cloud. A screenshot lands in
``tests/artifacts/``.
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

from test_instances_ui import open_lab, run_command  # noqa: E402 - after the skip above

PANEL = ".jp-ec2-panel"


def _wait_phase(server, instance_id: str, phase: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while server.api("GET", f"instances/{instance_id}")[1]["phase"] != phase:
        assert time.monotonic() < deadline, f"{instance_id} never {phase}"
        time.sleep(0.5)


def test_save_a_stopped_instance_launch_from_it_and_delete_it(
    jp_ec2_page: Page, jp_ec2_sim_lab: SimLab, jp_ec2_artifacts
):
    page, server = jp_ec2_page, jp_ec2_sim_lab.server
    # Given a stopped instance
    status, inst = server.api("POST", "instances", {"profile": "cpu"})
    assert status == 202, inst
    _wait_phase(server, inst["id"], "ready")
    server.api("POST", f"instances/{inst['id']}/stop", {})
    _wait_phase(server, inst["id"], "stopped")
    # And the panel open
    open_lab(page, server)
    run_command(page, "EC2 instances")
    card = page.locator(f'{PANEL} [data-testid="ec2-instance"][data-instance-id="{inst["id"]}"]')
    expect(card).to_have_attribute("data-phase", "stopped", timeout=60_000)
    images = page.locator(f'{PANEL} [data-testid="ec2-images"]')
    expect(images).to_contain_text("No saved image")

    # When "Save as image" is pressed / Then the dialog says a stopped instance is consistent
    card.locator('[data-action="image"]').click()
    dialog = page.locator('[data-testid="ec2-save-image"]')
    expect(dialog).to_contain_text("It is stopped, so the image is consistent.")
    dialog.locator("input").fill("ui image")
    page.locator(".jp-Dialog").get_by_role("button", name="Save image").click()
    # And the Images section lists it, pending, then available with its size
    row = images.locator('[data-testid="ec2-image"]', has_text="ui image")
    expect(row).to_be_visible(timeout=30_000)
    expect(row).to_have_attribute("data-state", "available", timeout=120_000)
    expect(row).to_contain_text("30 GB")
    image_id = row.get_attribute("data-image-id")
    assert image_id and image_id.startswith("ami-")
    page.screenshot(path=str(jp_ec2_artifacts / "images-section.png"))

    # When "Launch from image" is pressed / Then an instance of that image is launched
    before = {i["id"] for i in server.api("GET", "instances")[1]["instances"]}
    row.locator('[data-action="launch-from-image"]').click()
    deadline = time.monotonic() + 60
    while not (fresh := {i["id"] for i in server.api("GET", "instances")[1]["instances"]} - before):
        assert time.monotonic() < deadline, "no instance was launched from the image"
        time.sleep(0.3)
    launched = fresh.pop()
    cloud = jp_ec2_sim_lab.cloud.client()
    described = cloud.describe_instances(InstanceIds=[launched])["Reservations"][0]["Instances"]
    assert described[0]["ImageId"] == image_id

    # When "Delete" is pressed and confirmed / Then the image and its snapshot are gone
    snapshot = cloud.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"][0]
    row.locator('[data-action="delete-image"]').click()
    page.locator(".jp-Dialog").get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0, timeout=30_000)
    assert cloud.describe_images(Owners=["self"])["Images"] == []
    snapshots = cloud.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert snapshot["Ebs"]["SnapshotId"] not in {s["SnapshotId"] for s in snapshots}
    for instance_id in (inst["id"], launched):
        server.api("DELETE", f"instances/{instance_id}")
