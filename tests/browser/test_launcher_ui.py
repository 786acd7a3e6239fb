"""The lab extension in a real JupyterLab and Chromium: tiles, the panel, restore, advice."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, Request

    from .conftest import LabServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

expect = pytest.importorskip("playwright.sync_api").expect

PANEL = ".jp-ec2-panel"
ENABLE_HINT = "jupyter server extension enable jupyter_ec2"


def ec2_launcher_section(page: Page) -> Locator:
    """The launcher's "EC2" section."""
    title = page.locator(".jp-Launcher-sectionTitle").get_by_text("EC2", exact=True)
    return page.locator(".jp-Launcher-section", has=title)


def panel_tab(page: Page) -> Locator:
    """The main-area tab of the "EC2 instances" panel."""
    return page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="EC2 instances")


def workspace_saved_with_panel(request: Request) -> bool:
    """JupyterLab saved its layout with the panel in it (saves are debounced)."""
    return (
        request.method == "PUT"
        and "/lab/api/workspaces/" in request.url
        and "jupyter-ec2:jupyter-ec2-panel" in (request.post_data or "")
    )


def open_lab(page: Page, server: LabServer) -> None:
    """Open JupyterLab on a fresh workspace and wait until it has started."""
    page.goto(server.url("lab?reset"))
    expect(page.locator("#jp-main-dock-panel")).to_be_visible()


def search_palette(page: Page, query: str) -> Locator:
    """Open the command palette, type ``query`` and return the matching items."""
    page.keyboard.press("Control+Shift+C")
    search = page.locator(".lm-CommandPalette-input")
    expect(search).to_be_focused()
    search.fill(query)
    return page.locator(".lm-CommandPalette-item", has_text=query)


def test_profile_tiles_and_the_panel_which_survives_a_reload(
    jp_ec2_page: Page, jp_ec2_lab_server: LabServer, jp_ec2_artifacts: Path
) -> None:
    page = jp_ec2_page

    # Given JupyterLab with jupyter-ec2 and the launch profiles "cpu" and "gpu"
    open_lab(page, jp_ec2_lab_server)

    # Then the launcher shows one tile per profile under "EC2", in the configured order
    section = ec2_launcher_section(page)
    labels = section.locator(".jp-LauncherCard-label")
    expect(labels).to_have_text(["CPU small", "GPU box"])
    gpu_tile = section.locator(".jp-LauncherCard", has_text="GPU box")
    expect(gpu_tile).to_have_attribute("title", "Launch g5.xlarge (spot) in us-east-1")
    section.evaluate("node => node.scrollIntoView({block: 'center'})")
    page.screenshot(path=str(jp_ec2_artifacts / "launcher.png"))

    # When the user opens the "EC2 instances" panel from the palette
    with page.expect_request(workspace_saved_with_panel):
        search_palette(page, "EC2 instances").click()

    # Then the panel shows the profiles, the default one selected, and no instances
    panel = page.locator(PANEL)
    expect(panel).to_be_visible()
    expect(panel_tab(page)).to_have_count(1)
    gpu = panel.locator('.jp-ec2-profile[data-profile="gpu"]')
    cpu = panel.locator('.jp-ec2-profile[data-profile="cpu"]')
    expect(cpu).to_have_attribute("aria-selected", "true")
    expect(gpu).to_have_attribute("aria-selected", "false")
    expect(gpu.locator('[data-fact="instance-type"] dd')).to_have_text("g5.xlarge")
    expect(gpu.locator('[data-fact="region"] dd')).to_have_text("us-east-1")
    expect(gpu.locator('[data-fact="disk"] dd')).to_have_text("100 GB")
    expect(gpu.locator('[data-fact="spot"] dd')).to_have_text("yes")
    expect(cpu.locator('[data-fact="spot"] dd')).to_have_text("no")
    expect(gpu.locator('[data-fact="idle-stop"] dd')).to_have_text("after 60 min")
    expect(panel.locator('[data-testid="ec2-no-instances"]')).to_be_visible()
    page.screenshot(path=str(jp_ec2_artifacts / "panel.png"))

    # When the user selects the gpu profile in the panel
    gpu.click()

    # Then the selection moves, and the launch form follows it with the profile's values
    expect(gpu).to_have_attribute("aria-selected", "true")
    expect(gpu).to_have_class(r"jp-ec2-profile jp-mod-selected")
    expect(cpu).to_have_attribute("aria-selected", "false")
    form = panel.locator('[data-testid="ec2-launch-form"]')
    expect(form.locator('select[name="profile"]')).to_have_value("gpu")
    expect(form.locator('input[name="instance_type"]')).to_have_value("g5.xlarge")
    expect(form.locator('input[name="volume_gb"]')).to_have_value("100")
    expect(form.locator('input[name="spot"]')).to_be_checked()
    expect(form.locator('input[name="idle_stop_minutes"]')).to_have_value("60")

    # When the page is reloaded
    page.reload()

    # Then the panel is restored, showing the profiles again
    expect(panel_tab(page)).to_have_count(1)
    expect(page.locator(PANEL)).to_be_visible()
    expect(page.locator(f"{PANEL} .jp-ec2-profile")).to_have_count(2)
    expect(page.locator(f"{PANEL} .jp-ec2-profile[aria-selected='true']")).to_have_count(1)


def test_palette_command_opens_the_panel(jp_ec2_page: Page, jp_ec2_lab_server: LabServer) -> None:
    page = jp_ec2_page

    # Given JupyterLab with jupyter-ec2, on a fresh workspace
    open_lab(page, jp_ec2_lab_server)
    expect(ec2_launcher_section(page)).to_be_visible()

    # When the user searches the command palette for the panel
    item = search_palette(page, "EC2 instances")

    # Then the command is listed under the "EC2" category
    expect(item).to_have_count(1)
    header = page.locator(".lm-CommandPalette-header").get_by_text("EC2", exact=True)
    expect(header).to_have_count(1)

    # And there is one "Launch …" item per profile, and instance commands, disabled while no
    # instance exists
    page.keyboard.press("Escape")
    expect(search_palette(page, "Launch GPU box")).to_have_count(1)
    page.keyboard.press("Escape")
    for label in ("Stop an EC2 Instance", "Open an EC2 Instance in a New Tab"):
        expect(search_palette(page, label)).to_have_class(re.compile(r"lm-mod-disabled"))
        page.keyboard.press("Escape")
    item = search_palette(page, "EC2 instances")

    # When the user runs the panel command
    item.click()

    # Then the panel opens with the server's default profile selected
    expect(panel_tab(page)).to_have_count(1)
    selected = page.locator(f"{PANEL} .jp-ec2-profile[aria-selected='true']")
    expect(selected).to_have_attribute("data-profile", "cpu")


def test_without_the_server_extension_the_user_is_told_how_to_enable_it(
    jp_ec2_page: Page, jp_ec2_lab_server_without_api: LabServer, jp_ec2_artifacts: Path
) -> None:
    page = jp_ec2_page

    # Given JupyterLab with the lab extension but the jupyter_ec2 server extension disabled
    open_lab(page, jp_ec2_lab_server_without_api)

    # Then a notification says how to enable it, and the launcher has no EC2 tiles
    toast = page.locator(".Toastify__toast", has_text=ENABLE_HINT)
    expect(toast).to_be_visible()
    expect(page.locator(".jp-LauncherCard-label").first).to_be_visible()
    expect(ec2_launcher_section(page)).to_have_count(0)

    # When the user opens the panel from the palette
    search_palette(page, "EC2 instances").click()

    # Then the panel shows the same advice instead of profiles
    error = page.locator(f"{PANEL} [data-testid='ec2-error']")
    expect(error).to_contain_text("The jupyter_ec2 server extension is not enabled")
    expect(error).to_contain_text(ENABLE_HINT)
    expect(page.locator(f"{PANEL} .jp-ec2-profile")).to_have_count(0)
    page.screenshot(path=str(jp_ec2_artifacts / "no-server-extension.png"))


def test_without_aws_credentials_the_user_is_told_what_to_do(
    jp_ec2_page: Page, jp_ec2_lab_server_without_credentials: LabServer
) -> None:
    page = jp_ec2_page

    # Given JupyterLab with jupyter-ec2 on a machine with no AWS credentials
    open_lab(page, jp_ec2_lab_server_without_credentials)

    # When the user clicks a profile tile
    ec2_launcher_section(page).locator(".jp-LauncherCard", has_text="CPU small").click()

    # Then the launch notification turns into advice, and the panel says what to do
    advice = page.locator(".Toastify__toast", has_text="AWS credentials are not configured")
    expect(advice).to_be_visible()
    banner = page.locator(f"{PANEL} [data-testid='ec2-credentials']")
    expect(banner).to_contain_text("aws configure")
    expect(banner).to_contain_text("AWS_ACCESS_KEY_ID")
    expect(banner).to_contain_text("c.EC2Backend.aws_profile")
    expect(page.locator(f"{PANEL} [data-testid='ec2-no-instances']")).to_be_visible()

    # When the user asks the notification what to do
    advice.get_by_role("button", name="What to do").click()

    # Then a dialog explains the ways to configure credentials
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("aws configure")
    expect(dialog).to_contain_text("AWS_SECRET_ACCESS_KEY")
