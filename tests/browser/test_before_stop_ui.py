"""Work saved before Stop and Terminate: unsaved edits in the remote JupyterLab, in Chromium.

A real instance comes up on the simulated cloud (moto, an sshd host, provisioning) with an
environment that has jupyter-collaboration (:mod:`jupyter_ec2.testing.collab`: the image's
JupyterLab plus jupyter-collaboration from the local wheel mirror), and the default
``before_stop``, save-notebooks. The collaboration server's own autosave is turned OFF on the
instance (``YDocExtension.document_save_delay = None``), and each test first checks that the
edit typed in the browser is NOT on disk: without before_stop it would be lost with the stop.
The idle stop is proven at the watchdog level in ``tests/test_before_stop.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

NOTEBOOK_USER = "jec2bs" + secrets.token_hex(3)
READY_TIMEOUT = 240.0


def _browser_conftest(config: pytest.Config) -> Any:
    """This directory's conftest module, as pytest imported it (see test_preflight_ui.py)."""
    here = Path(__file__).with_name("conftest.py").resolve()
    for module in config.pluginmanager.get_plugins():
        if Path(getattr(module, "__file__", None) or "/").resolve() == here:
            return module
    raise RuntimeError("tests/browser/conftest.py is not loaded")


@pytest.fixture(scope="module")
def collab_lab(jp_ec2_session_cloud, tmp_path_factory, pytestconfig) -> Iterator[SimLab]:
    """``jupyter lab`` with jupyter-ec2 whose instances run JupyterLab with collaboration."""
    conftest = _browser_conftest(pytestconfig)
    from jupyter_ec2.testing import InstanceHosts
    from jupyter_ec2.testing.collab import (
        has_collaboration_wheels,
        make_collab_env,
        remove_collab_env,
    )
    from jupyter_ec2.testing.demo import remove_user, simulated_config

    if os.geteuid() != 0:
        pytest.skip("the instance hosts run sshd and create a notebook user: run as root")
    if not has_collaboration_wheels():
        pytest.skip("the wheel mirror has no jupyter-collaboration")
    env_dir = Path(f"/tmp/jec2-collab-{secrets.token_hex(4)}")
    base = tmp_path_factory.mktemp("before_stop_lab")
    cloud = jp_ec2_session_cloud
    cloud.reset()
    hosts = InstanceHosts(cloud, base / "hosts", boot_delay=2.0)
    try:
        python = make_collab_env(env_dir)
        config = simulated_config(
            cloud,
            hosts,
            base / "ec2-state",
            notebook_user=NOTEBOOK_USER,
            profiles=conftest.PROFILES,
        )
        config["EC2Launcher"]["default_profile"] = "cpu"
        config["Provisioner"]["environment"] = {"kind": "existing", "python": str(python)}
        assert config["Provisioner"].get("before_stop", "save-notebooks") == "save-notebooks"
        with conftest.run_lab(base, server_config=config, extra_env=cloud.env()) as server:
            try:
                yield conftest.SimLab(server=server, cloud=cloud, hosts=hosts)
            finally:
                conftest._terminate_everything(server, hosts)
    finally:
        hosts.close()
        remove_user(NOTEBOOK_USER)
        remove_collab_env(env_dir)


def _wait(server, iid: str, phases: set[str], timeout: float = READY_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        _, inst = server.api("GET", f"instances/{iid}")
        if inst["phase"] in phases:
            return inst
        assert inst["phase"] != "failed", inst["error"]
        assert time.monotonic() < deadline, inst
        time.sleep(0.5)


def _notebook_path(name: str) -> Path:
    return Path(os.path.expanduser(f"~{NOTEBOOK_USER}")) / "notebooks" / name


def _sources(path: Path) -> str:
    return "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])


def _write_notebook(path: Path) -> None:
    cell = {"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": [],
            "execution_count": None, "id": "c1"}  # fmt: skip
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3",
                             "language": "python"}}  # fmt: skip
    path.write_text(json.dumps({"cells": [cell], "metadata": kernel, "nbformat": 4,
                                "nbformat_minor": 5}))  # fmt: skip
    subprocess.run(["chown", f"{NOTEBOOK_USER}:", str(path)], check=True)


def _launch_with_unsaved_edit(page: Page, lab: SimLab, name: str, text: str):
    """A ready instance whose remote JupyterLab has ``text`` typed into a notebook, unsaved."""
    from jupyter_ec2.testing.collab import turn_autosave_off

    server = lab.server
    status, inst = server.api("POST", "instances", {"profile": "cpu"})
    assert status == 202, inst
    iid = inst["id"]
    _wait(server, iid, {"ready"})
    turn_autosave_off(iid)
    notebook = _notebook_path(name)
    _write_notebook(notebook)
    # The remote JupyterLab, opened from the panel's Open button (its own origin and handoff)
    page.goto(server.url("lab?reset"))
    expect(page.locator("#jp-main-dock-panel")).to_be_visible()
    search = page.locator(".lm-CommandPalette-input")
    deadline = time.monotonic() + 60
    while not search.is_visible():  # the shortcut works once JupyterLab has fully started
        assert time.monotonic() < deadline, "the command palette never opened"
        page.keyboard.press("Control+Shift+C")
        time.sleep(1)
    search.fill("EC2 instances")
    page.locator(".lm-CommandPalette-item", has_text="EC2 instances").first.click()
    card = page.locator(f'[data-testid="ec2-instance"][data-instance-id="{iid}"]')
    expect(card.locator('[data-action="open"]')).to_be_visible(timeout=60_000)
    with page.context.expect_page() as popup:
        card.locator('[data-action="open"]').click()
    remote = popup.value
    remote.wait_for_url(re.compile(rf"/jupyter-ec2/remote/{iid}/lab"))
    expect(remote.locator("#jp-main-dock-panel")).to_be_visible(timeout=90_000)
    # (reset: the notebook user's saved layout, shared by instances on this host, is not wanted)
    remote.goto(remote.url.split("/lab")[0] + f"/lab/tree/{name}?reset")
    editor = remote.locator(".jp-Cell .jp-InputArea-editor .cm-content:visible").first
    expect(editor).to_be_visible(timeout=60_000)
    time.sleep(2)  # a dialog JupyterLab opens with the notebook shows by now
    dialog = remote.locator(".jp-Dialog")
    if dialog.count():
        text = dialog.inner_text()
        assert "Kernel" in text, f"an unexpected dialog: {text}"
        dialog.locator("button.jp-mod-accept").click()  # the kernel it proposes
    editor.click()
    remote.keyboard.press("End")
    remote.keyboard.type(text)
    # The edit is in the notebook (dirty), and reached the server's shared document …
    expect(remote.locator(".jp-mod-dirty")).not_to_have_count(0, timeout=30_000)
    time.sleep(3)  # longer than the collaboration server's default autosave delay (1 s)
    # … but not the disk: without before_stop it would be lost with the stop
    assert text not in _sources(notebook), "the server saved by itself: the test proves nothing"
    return iid, card, remote, notebook


def test_stop_saves_the_unsaved_notebook_before_the_instance_goes_down(
    jp_ec2_page: Page, collab_lab: SimLab, jp_ec2_artifacts: Path
):
    server = collab_lab.server
    # Given a notebook with an unsaved edit open in the remote JupyterLab
    iid, card, remote, notebook = _launch_with_unsaved_edit(jp_ec2_page, collab_lab,
                                                           "stop.ipynb", "  # stop-42")  # fmt: skip
    remote.screenshot(path=str(jp_ec2_artifacts / "before-stop-unsaved.png"))
    # When the user clicks Stop in the panel
    jp_ec2_page.bring_to_front()
    card.locator('[data-action="stop"]').click()
    _wait(server, iid, {"stopped"}, timeout=120)
    remote.close()  # nothing in the browser may push the edit again after the start
    # Then the instance log says what was saved before the stop
    _, log = server.api("GET", f"instances/{iid}/log")
    texts = [line["text"] for line in log["lines"] if line["step"] == "before-stop"]
    assert texts[-1] == "Before stop: saved 1 notebook(s): stop.ipynb; 0 without unsaved changes."
    # And after a start, the file holds the edit
    status, _ = server.api("POST", f"instances/{iid}/start", {})
    assert status == 202
    _wait(server, iid, {"ready"})
    assert "# stop-42" in _sources(notebook)
    server.api("DELETE", f"instances/{iid}")
    _wait(server, iid, {"terminated"}, timeout=120)


def test_terminate_saves_the_unsaved_notebook_before_the_instance_goes(
    jp_ec2_page: Page, collab_lab: SimLab
):
    server = collab_lab.server
    # Given a notebook with an unsaved edit open in the remote JupyterLab
    iid, card, remote, notebook = _launch_with_unsaved_edit(
        jp_ec2_page, collab_lab, "terminate.ipynb", "  # terminate-42"
    )
    # When the user terminates it (and confirms)
    jp_ec2_page.bring_to_front()
    card.locator('[data-action="terminate"]').click()
    dialog = jp_ec2_page.locator(".jp-Dialog")
    expect(dialog).to_contain_text(iid)
    dialog.locator("button.jp-mod-warn", has_text="Terminate").click()
    _wait(server, iid, {"terminated"}, timeout=120)
    remote.close()
    # Then the edit was saved before EC2 was asked to terminate (read from the instance's disk,
    # which on this host outlives the instance)
    assert "# terminate-42" in _sources(notebook)
    _, log = server.api("GET", f"instances/{iid}/log")
    texts = [line["text"] for line in log["lines"] if line["step"] == "before-stop"]
    assert texts[-1].startswith("Before stop: saved 1 notebook(s): terminate.ipynb")
