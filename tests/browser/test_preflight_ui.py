"""Check setup in a real JupyterLab and Chromium: the banner, the fix, the disabled GPU profile.

The server is a real ``jupyter lab`` on the simulated cloud (moto over HTTP on loopback), whose
account has a G and VT vCPU quota of 0 (set through :mod:`jupyter_ec2.testing.account`, as on a
new AWS account); nothing is launched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from jupyter_ec2.testing import SimulatedCloud

    from .conftest import LabServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _browser_conftest(config: pytest.Config) -> Any:
    """This directory's conftest module (run_lab, PROFILES), as pytest imported it.

    Looked up among pytest's plugins, not ``sys.modules``: several directories have a
    ``conftest.py``, and under one module name only the last one imported stays there.
    """
    here = Path(__file__).with_name("conftest.py").resolve()
    for module in config.pluginmanager.get_plugins():
        if Path(getattr(module, "__file__", None) or "/").resolve() == here:
            return module
    raise RuntimeError("tests/browser/conftest.py is not loaded")


expect = pytest.importorskip("playwright.sync_api").expect
PlaywrightTimeoutError = pytest.importorskip("playwright.sync_api").TimeoutError


@pytest.fixture(scope="module")
def jp_ec2_gpu_quota_lab(
    jp_ec2_session_cloud: SimulatedCloud,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[LabServer]:
    """``jupyter lab`` on the simulated cloud, whose G and VT quotas (on-demand, spot) are 0."""
    from jupyter_ec2.testing import account

    conftest = _browser_conftest(pytestconfig)
    cloud = jp_ec2_session_cloud
    cloud.reset()
    cloud.set_service_quota("L-DB2E81BA", 0)
    cloud.set_service_quota("L-3819A6DF", 0)
    base = tmp_path_factory.mktemp("jp_ec2_preflight_lab")
    config = {
        "EC2Launcher": {
            "profiles": conftest.PROFILES,
            "default_profile": "cpu",
            "state_dir": str(base / "ec2-state"),
        },
        "EC2Backend": {"endpoint_url": cloud.endpoint_url, "ssh_cidrs": ["198.51.100.7/32"]},
    }
    try:
        with conftest.run_lab(base, server_config=config, extra_env=cloud.env()) as server:
            yield server
    finally:
        account.reset_overrides()


def test_banner_shows_the_quota_fix_and_the_gpu_profile_is_disabled(
    jp_ec2_page: Page,
    jp_ec2_gpu_quota_lab: LabServer,
    jp_ec2_session_cloud: SimulatedCloud,
    jp_ec2_artifacts: Path,
):
    page = jp_ec2_page
    server = jp_ec2_gpu_quota_lab
    # Given JupyterLab on an account with no G-family vCPU quota
    page.goto(server.url("lab?reset"))
    expect(page.locator("#jp-main-dock-panel")).to_be_visible()
    # When the user runs "Check setup" from the command palette
    # (tried again if the palette closes before its item is clicked: on a busy machine a late
    # launcher takes the focus, and the item leaves the page during the click)
    search = page.locator(".lm-CommandPalette-input")
    item = page.locator(".lm-CommandPalette-item", has_text="Check setup").first
    for attempt in range(4):
        if not search.is_visible():
            page.keyboard.press("Control+Shift+C")
        try:
            expect(search).to_be_focused(timeout=5_000)
            search.fill("Check setup", timeout=5_000)
            item.click(timeout=5_000)  # a click that times out never clicked
            break
        except (AssertionError, PlaywrightTimeoutError):
            if attempt == 3:
                raise
    # Then the panel shows a banner with the failing quota check and its fix
    banner = page.get_by_test_id("ec2-preflight")
    expect(banner).to_be_visible(timeout=60_000)
    quota = banner.locator('[data-check="quota"]')
    expect(quota).to_contain_text("g5.xlarge needs 4 vCPUs")
    expect(quota).to_contain_text("is 0")
    expect(banner.locator('[data-fix-for="quota"]')).to_contain_text("quota increase")
    expect(banner.locator('[data-fix-for="quota"]')).to_contain_text("L-3819A6DF")
    # And only the quota check is listed as failing
    expect(banner.locator(".jp-ec2-preflight-check")).to_have_count(1)
    # And in the launch form the GPU profile is disabled with the quota reason
    form = page.get_by_test_id("ec2-launch-form")
    gpu_option = form.locator('select[name="profile"] option[value="gpu"]')
    expect(gpu_option).to_be_disabled()
    expect(gpu_option).to_contain_text("unavailable: quota")
    expect(form.locator('select[name="profile"] option[value="cpu"]')).to_be_enabled()
    # And when the GPU profile is chosen (its tile in the panel), Launch is off and says why
    page.get_by_test_id("ec2-profile-gpu").click()
    reason = form.get_by_test_id("ec2-profile-blocked")
    expect(reason).to_contain_text("quota check")
    expect(reason).to_contain_text("g5.xlarge needs 4 vCPUs")
    expect(form.locator('[data-action="launch"]')).to_be_disabled()
    page.screenshot(path=str(jp_ec2_artifacts / "preflight-banner.png"))
    # And the CPU profile can still be launched (its button is enabled); nothing was launched
    page.get_by_test_id("ec2-profile-cpu").click()
    expect(form.locator('[data-action="launch"]')).to_be_enabled()
    # When a launch asks for an instance type the region does not offer
    form.locator('input[name="instance_type"]').fill("x8aedz.large")
    form.locator('[data-action="launch"]').click()
    # Then the refusal beside the field points back to the region check
    error = form.locator('[data-error-for="overrides.instance_type"]')
    expect(error).to_contain_text("not offered")
    expect(error).to_contain_text("'region' check in Check setup")
    # And nothing was launched
    ec2 = jp_ec2_session_cloud.client("ec2")
    assert ec2.describe_instances()["Reservations"] == []
