"""The instances panel in Chromium, on the simulated cloud: launch, watch, open, stop, terminate.

Every instance here really comes up: moto plays EC2, a private sshd on loopback plays the
machine, provisioning creates a notebook user and starts a remote JupyterLab on this host, and
"Open" reaches it through the local server's proxy. Screenshots land in ``tests/artifacts/``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, Request, WebSocket

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
PlaywrightTimeoutError = pytest.importorskip("playwright.sync_api").TimeoutError

PANEL = ".jp-ec2-panel"
#: The order of the phases an instance goes through to come up (DESIGN.md §2).
BRING_UP = ["launching", "booting", "connecting", "provisioning", "starting", "ready"]
#: Generous bounds for one machine running moto, sshd, two Jupyter servers and Chromium.
READY_TIMEOUT_MS = 180_000
STOP_TIMEOUT_MS = 90_000


# -- helpers ----------------------------------------------------------------------------------


def open_lab(page: Page, server: LabServer) -> None:
    """Open JupyterLab on a fresh workspace and wait until it has started."""
    page.goto(server.url("lab?reset"))
    expect(page.locator("#jp-main-dock-panel")).to_be_visible()


def run_command(page: Page, label: str) -> None:
    """Run the palette item labelled ``label``.

    Tried again while the palette is hidden or closes before its item is clicked: JupyterLab
    shows its dock panel before it has finished restoring (its shortcuts may not listen yet, and
    a launcher that opens late takes the focus, which closes the palette), which on a busy
    machine can take seconds.
    """
    search = page.locator(".lm-CommandPalette-input")
    item = page.locator(".lm-CommandPalette-item", has_text=label).first
    for _attempt in range(4):
        if not search.is_visible():
            page.keyboard.press("Control+Shift+C")
        try:
            expect(search).to_be_focused(timeout=3_000)
            search.fill(label, timeout=3_000)
            item.click(timeout=3_000)  # a click that times out never clicked
            return
        except (AssertionError, PlaywrightTimeoutError):
            continue
    if not search.is_visible():
        page.keyboard.press("Control+Shift+C")
    expect(search).to_be_focused()
    search.fill(label)
    item.click()


def launcher_tile(page: Page, label: str) -> Locator:
    """The launcher tile of a profile in the "EC2" section."""
    title = page.locator(".jp-Launcher-sectionTitle").get_by_text("EC2", exact=True)
    section = page.locator(".jp-Launcher-section", has=title)
    return section.locator(".jp-LauncherCard", has_text=label)


def instance_card(page: Page, instance_id: str) -> Locator:
    """The panel's card of one instance."""
    return page.locator(f'{PANEL} [data-testid="ec2-instance"][data-instance-id="{instance_id}"]')


def toast(page: Page, text: str) -> Locator:
    """The JupyterLab notification toasts containing ``text``."""
    return page.locator(".Toastify__toast", has_text=text)


def workspace_saved_with_panel(request: Request) -> bool:
    """JupyterLab saved its layout with the instances panel in it."""
    return (
        request.method == "PUT"
        and "/lab/api/workspaces/" in request.url
        and "jupyter-ec2:jupyter-ec2-panel" in (request.post_data or "")
    )


def managed_ids(server: LabServer) -> set[str]:
    """The ids of the instances the server manages (terminated ones included)."""
    status, body = server.api("GET", "instances")
    assert status == 200, body
    return {item["id"] for item in body["instances"]}


def new_instance_id(server: LabServer, before: set[str], timeout: float = 30) -> str:
    """The one instance that appeared since ``before`` was read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = managed_ids(server) - before
        if fresh:
            assert len(fresh) == 1, fresh
            return fresh.pop()
        time.sleep(0.2)
    raise AssertionError(f"no instance was launched within {timeout:.0f} s")


def follow_phases(card: Locator, until: str, timeout_ms: int, on_phase=None) -> list[str]:
    """Read the card's phase until it is ``until``; the distinct phases seen, in order.

    ``on_phase(phase)`` is called once for each new phase (e.g. to take a screenshot).
    """
    seen: list[str] = []
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        phase = card.get_attribute("data-phase", timeout=timeout_ms)
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
            if on_phase is not None:
                on_phase(phase)
        if phase == until:
            return seen
        assert phase != "failed", card.inner_text()
        time.sleep(0.1)
    raise AssertionError(f"phase {until!r} not reached in {timeout_ms} ms; seen {seen}")


def watch_kernel_socket(socket: WebSocket, frames: list[str]) -> None:
    """Collect what a kernel's websocket receives (the proxied ``…/channels``)."""
    if "/channels" in socket.url:
        socket.on("framereceived", lambda payload: frames.append(str(payload)[:80]))


def wait_until(page: Page, condition, timeout: float, message: str) -> None:
    """Wait until ``condition()`` is true; fail with ``message`` after ``timeout`` seconds.

    Waits through the page, so that Playwright keeps delivering events meanwhile.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        page.wait_for_timeout(100)


def assert_in_lifecycle_order(phases: list[str]) -> None:
    """The phases seen while coming up only ever move forward."""
    ranks = [BRING_UP.index(phase) for phase in phases]
    assert ranks == sorted(ranks), phases


def terminate_quietly(server: LabServer, instance_id: str) -> None:
    """Clean up after a failed test: terminate through the REST API."""
    server.api("DELETE", f"instances/{instance_id}")


# -- tests ------------------------------------------------------------------------------------


def test_a_bad_override_is_shown_beside_its_field_and_launches_nothing(
    jp_ec2_page: Page, jp_ec2_sim_lab: SimLab, jp_ec2_artifacts: Path
) -> None:
    page, server = jp_ec2_page, jp_ec2_sim_lab.server
    ids_before = managed_ids(server)
    cloud_before = len(jp_ec2_sim_lab.cloud_instances())

    # Given the EC2 instances panel with its launch form
    open_lab(page, server)
    run_command(page, "EC2 instances")
    form = page.locator(f'{PANEL} [data-testid="ec2-launch-form"]')
    expect(form).to_be_visible()
    expect(form.locator('select[name="profile"]')).to_have_value("cpu")
    expect(form.locator('input[name="volume_gb"]')).to_have_value("30")

    # When the user asks for a 2 GB disk and launches
    form.locator('input[name="volume_gb"]').fill("2")
    form.locator('[data-action="launch"]').click()

    # Then the server's message is shown beside the disk input, which is marked invalid
    disk_field = form.locator("label", has=page.locator('input[name="volume_gb"]'))
    error = disk_field.locator('[data-error-for="overrides.volume_gb"]')
    expect(error).to_be_visible()
    expect(error).to_contain_text("volume_gb")
    expect(form.locator('input[name="volume_gb"]')).to_have_attribute("aria-invalid", "true")
    expect(form.locator("[data-error-for]")).to_have_count(1)
    # And no "Launching…" notification stays, nothing is launched, the cloud is unchanged
    expect(toast(page, "Launching")).to_have_count(0)
    assert managed_ids(server) == ids_before
    assert len(jp_ec2_sim_lab.cloud_instances()) == cloud_before
    form.scroll_into_view_if_needed()
    page.screenshot(path=str(jp_ec2_artifacts / "launch-form-error.png"))

    # When the user corrects the value
    form.locator('input[name="volume_gb"]').fill("40")

    # Then the error goes away
    expect(form.locator("[data-error-for]")).to_have_count(0)
    expect(form.locator('input[name="volume_gb"]')).to_have_attribute("aria-invalid", "false")


@pytest.mark.timeout(900)
def test_launch_from_a_tile_open_the_remote_notebook_then_stop_start_and_terminate(
    jp_ec2_page: Page, jp_ec2_sim_lab: SimLab, jp_ec2_artifacts: Path
) -> None:
    page, server = jp_ec2_page, jp_ec2_sim_lab.server
    before = managed_ids(server)
    instance_id = None
    try:
        # Given JupyterLab with jupyter-ec2 on the simulated cloud
        open_lab(page, server)

        # When the user clicks the "CPU small" tile
        launcher_tile(page, "CPU small").click()

        # Then a notification says it is launching, and the panel shows the new instance
        expect(toast(page, "Launching CPU small")).to_be_visible()
        instance_id = new_instance_id(server, before)
        card = instance_card(page, instance_id)
        expect(card).to_be_visible()
        expect(card.locator('[data-fact="instance-type"] dd')).to_have_text("t3.medium")
        expect(card.locator('[data-fact="region"] dd')).to_have_text("us-east-1")
        expect(card.locator('[data-fact="profile"] dd')).to_have_text("CPU small")

        # And its phases advance, with a progress bar, the step's message and the time taken
        shot = {"taken": False}

        def on_phase(phase: str) -> None:
            # Any phase before ready: provisioning can take under one poll of the panel here.
            if phase in ("booting", "connecting", "provisioning", "starting") and not shot["taken"]:
                expect(card.locator('[data-testid="ec2-progress"]')).to_be_visible()
                expect(card.locator('[data-testid="ec2-message"]')).not_to_be_empty()
                expect(card.locator('[data-testid="ec2-elapsed"]')).to_have_text(
                    re.compile(r"\d+ (s|min)")
                )
                page.screenshot(path=str(jp_ec2_artifacts / "panel-launching.png"))
                shot["taken"] = True

        phases = follow_phases(card, "ready", READY_TIMEOUT_MS, on_phase)
        assert_in_lifecycle_order(phases)
        assert len(phases) >= 2 and phases[-1] == "ready", phases
        assert shot["taken"], phases

        # Then the instance is ready: forward up, no progress bar, Open offered, and a toast
        expect(card.locator('[data-testid="ec2-phase"]')).to_have_text("Ready")
        expect(card.locator('[data-testid="ec2-forward"]')).to_have_attribute("data-state", "up")
        expect(card.locator('[data-testid="ec2-progress"]')).to_have_count(0)
        expect(card.locator(".jp-ec2-actions [data-action]")).to_have_count(
            7
        )  # open, reconnect, stop, resize, image, terminate, log
        # And the Dask workers control of a ready instance (labextension/src/workers.tsx)
        expect(card.locator('[data-action="add-workers"]')).to_be_visible()
        ready_toast = toast(page, "CPU small is ready")
        expect(ready_toast).to_be_visible()
        expect(ready_toast.get_by_role("button", name="Open")).to_be_visible()
        expect(toast(page, "Launching CPU small")).to_have_count(0)
        page.screenshot(path=str(jp_ec2_artifacts / "panel-ready.png"))

        # When the user clicks Open
        with page.context.expect_page() as popup:
            card.locator('[data-action="open"]').click()
        remote = popup.value
        kernel_frames: list[str] = []
        remote.on("websocket", lambda ws: watch_kernel_socket(ws, kernel_frames))
        refused: list[str] = []
        remote.on(
            "response",
            lambda r: (
                refused.append(f"{r.status} {r.request.method} {r.url}")
                if r.status >= 400
                else None
            ),
        )

        # Then a new tab shows the remote JupyterLab, through this server's proxy
        remote.wait_for_url(re.compile(rf"/jupyter-ec2/remote/{instance_id}/lab"))
        expect(remote.locator("#jp-main-dock-panel")).to_be_visible(timeout=90_000)
        assert remote.evaluate("window.opener") is None

        # When the user creates a notebook there, runs print(6*7) and saves
        remote.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
        kernel_status = remote.locator(".jp-Notebook-ExecutionIndicator")
        expect(kernel_status).to_have_attribute("data-status", "idle", timeout=90_000)
        # JupyterLab shows "idle" before the kernel's websocket is up (NOTES.md): wait for it.
        wait_until(remote, lambda: bool(kernel_frames), 60, "the kernel websocket is silent")
        remote.locator(".jp-Cell .jp-InputArea-editor .cm-content").first.click()
        remote.keyboard.type("print(6*7)")
        remote.keyboard.press("Shift+Enter")

        # Then the output is 42, and the notebook is saved on the instance
        output = remote.locator(".jp-Cell .jp-OutputArea-output").first
        expect(output).to_have_text("42", timeout=60_000)
        remote.keyboard.press("Control+s")
        # JupyterLab offers to rename an untitled notebook on its first save.
        rename = remote.locator(".jp-Dialog", has_text="Rename file")
        rename.locator('input[type="text"]').fill("answer.ipynb")
        rename.locator("button.jp-mod-accept").click()
        expect(remote.locator(".jp-mod-dirty")).to_have_count(0)
        # (asked as a program, with the local token: the browser's page lives on the
        # instance's own origin, which Playwright's request client cannot resolve)
        saved = remote.request.get(
            f"{server.base_url}jupyter-ec2/remote/{instance_id}/api/contents/answer.ipynb",
            headers={"Authorization": f"token {server.token}"},
        )
        assert saved.status == 200, saved.text()
        assert "print(6*7)" in saved.text()
        # The file browser's listing of the notebook's root was never refused (the first save's
        # check that "answer.ipynb" is free is a 404 by design).
        root_listing = re.compile(r"/api/contents/?(\?|$)")
        assert not [line for line in refused if root_listing.search(line)], refused
        news = toast(remote, "official Jupyter news")
        if news.count() > 0:
            news.get_by_role("button", name="No", exact=True).click()
            expect(news).to_have_count(0)
        remote.screenshot(path=str(jp_ec2_artifacts / "remote-notebook.png"))
        remote.close()

        # When, back in the first tab, the user stops the instance
        page.bring_to_front()
        card.locator('[data-action="stop"]').click()

        # Then it stops; Start is offered and Open is not
        follow_phases(card, "stopped", STOP_TIMEOUT_MS)
        expect(card.locator('[data-action="start"]')).to_be_visible()
        expect(card.locator('[data-action="open"]')).to_have_count(0)
        expect(card.locator('[data-testid="ec2-forward"][data-state="up"]')).to_have_count(0)

        # When the user starts it again
        card.locator('[data-action="start"]').click()

        # Then it comes back up, and Open is offered again
        follow_phases(card, "ready", READY_TIMEOUT_MS)
        expect(card.locator('[data-action="open"]')).to_be_visible()

        # When the user terminates it, the confirmation says what is lost
        card.locator('[data-action="terminate"]').click()
        dialog = page.locator(".jp-Dialog")
        expect(dialog).to_contain_text("everything on it is lost")
        expect(dialog).to_contain_text(instance_id)
        dialog.locator("button.jp-mod-warn", has_text="Terminate").click()

        # Then the instance is gone from the panel, and terminated in the cloud
        expect(card).to_have_count(0, timeout=STOP_TIMEOUT_MS)
        states = {
            item["InstanceId"]: item["State"]["Name"] for item in jp_ec2_sim_lab.cloud_instances()
        }
        assert states[instance_id] in ("shutting-down", "terminated")
        instance_id = None
    finally:
        if instance_id is not None:
            terminate_quietly(server, instance_id)


@pytest.mark.timeout(600)
def test_a_reload_mid_launch_restores_the_panel_which_keeps_following(
    jp_ec2_page: Page, jp_ec2_sim_lab: SimLab
) -> None:
    page, server = jp_ec2_page, jp_ec2_sim_lab.server
    before = managed_ids(server)
    instance_id = None
    # Given the user setting that opens a launched notebook by itself once it is ready
    server.set_user_settings({"autoOpen": True})
    try:
        # And an instance launched from a tile, still coming up, with the panel saved in the
        # workspace (JupyterLab saves its layout a moment after a change)
        open_lab(page, server)
        with page.expect_request(workspace_saved_with_panel):
            launcher_tile(page, "CPU small").click()
        instance_id = new_instance_id(server, before)
        card = instance_card(page, instance_id)
        expect(card).to_be_visible()
        phase = card.get_attribute("data-phase")
        assert phase in BRING_UP[:-1], phase

        # When the page is reloaded
        page.reload()

        # Then the panel is restored with the instance, still coming up
        expect(page.locator(PANEL)).to_be_visible()
        card = instance_card(page, instance_id)
        expect(card).to_be_visible()

        # And it keeps following it to ready, and opens the notebook in a new tab by itself
        with page.context.expect_page(timeout=READY_TIMEOUT_MS) as popup:
            follow_phases(card, "ready", READY_TIMEOUT_MS)
        remote = popup.value
        remote.wait_for_url(re.compile(rf"/jupyter-ec2/remote/{instance_id}/lab"))
        expect(remote.locator("#jp-main-dock-panel")).to_be_visible(timeout=90_000)
        remote.close()
        ready_toast = toast(page, "CPU small is ready and opened in a new tab")
        expect(ready_toast).to_be_visible()
        expect(ready_toast.get_by_role("button", name="Open")).to_be_visible()

        # When the user shows the log
        card.locator('[data-action="log"]').click()

        # Then the log of the launch is shown, from its first line on
        log = card.locator('[data-testid="ec2-log"]')
        expect(log.locator(".jp-ec2-log-line").first).to_be_visible()
        expect(log).to_contain_text(instance_id)
        expect(card.locator('[data-action="log"]')).to_have_text("Hide log")
    finally:
        server.set_user_settings({})
        if instance_id is not None:
            terminate_quietly(server, instance_id)
