"""The demo in user mode: run by an ordinary user of this machine, without root or sudo.

A user with a random name is created for the module (and removed after it, also on failure);
the project's source is copied into its home and installed from there into a fresh virtual
environment, with packages from PyPI, and the simulated image is made under its cache
directory, all as that user. The demo then runs as that user: a launch through the REST API
reaches ``ready`` and the remote notebook answers through the local server's proxy, and the user
owns no file outside its home and the temporary directories.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from nonroot_user import ScratchUser, launch_to_ready_through_proxy, wait_for_text

from jupyter_ec2.testing.cloud import free_port
from jupyter_ec2.testing.hosts import end_processes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("runuser"),
        reason="creating a test user needs root and runuser",
    ),
]


def install_project(user: ScratchUser) -> Path:
    """The project installed as ``user`` into ~/venv from its copy of the source; the image."""
    src = user.copy_source()
    user.run(["/usr/bin/python3", "-m", "venv", f"{user.home}/venv"])
    pip = [f"{user.home}/venv/bin/python", "-m", "pip", "install", "-q", "--no-input"]
    user.run([*pip, f"{src}[sim]"])
    image = f"{user.home}/.cache/jupyter-ec2-sim/image-python"
    user.run(["/usr/bin/python3", "-m", "venv", image])
    user.run([f"{image}/bin/python", "-m", "pip", "install", "-q", "jupyter_server", "ipykernel"])
    return src


@pytest.fixture(scope="module")
def scratch_user():
    """A non-root user with the project installed in its home; removed after the module."""
    user = ScratchUser()
    try:
        install_project(user)
        yield user
    finally:
        user.remove()


def test_demo_runs_as_an_ordinary_user(scratch_user: ScratchUser, tmp_path: Path):
    # Given an ordinary user with the project installed in its home and no sudo
    user = scratch_user
    assert user.uid != 0 and not shutil.which("sudo")
    log = tmp_path / "demo.log"
    port = free_port()
    # When that user runs the demo
    demo = user.popen(
        [f"{user.home}/venv/bin/python", "-m", "jupyter_ec2.testing.demo", "--port", str(port)],
        log,
    )
    try:
        found = wait_for_text(log, r"Open: http://127\.0\.0\.1:\d+/lab\?token=(\w+)", demo, 180)
        # Then it says it runs in user mode
        assert f"user mode: sshd runs as {user.name}" in log.read_text()
        # And a launch reaches ready and the remote notebook answers through the proxy
        try:
            launch_to_ready_through_proxy(f"http://127.0.0.1:{port}", found.group(1))
        except AssertionError as error:
            pytest.fail(f"{error}\n{user.diagnostics(log)}")
        # And the provisioning ran without root, with its state in the user's home
        assert list((user.home / ".local/state/jupyter-ec2").glob("i-*/jupyter_server_config.json"))
    finally:
        end_processes([demo.pid], timeout=20)
        end_processes(user.pids())
    # And the user owns nothing outside its home and the temporary directories
    assert user.files_outside() == []
