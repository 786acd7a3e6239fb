"""The demo in user mode: run by an ordinary user of this machine, without root or sudo.

A user with a random name is created (and removed after the session, also on failure); the
project's source is copied into its home and installed from there into a fresh virtual
environment, with packages from PyPI, and the simulated image is made under its cache
directory, all as that user (``nonroot_user.repo2docker_user``: the install is the one Binder's
postBuild does, shared with ``test_binder.py``, which runs something else on it). The demo then
runs as that user: a launch through the REST API reaches ``ready`` and the remote notebook
answers through the local server's proxy, and the user owns no file outside its home and the
temporary directories.
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


def test_demo_runs_as_an_ordinary_user(repo2docker_user: ScratchUser, tmp_path: Path):
    # Given an ordinary user with the project installed in its home and no sudo
    user = repo2docker_user
    assert user.uid != 0 and not shutil.which("sudo")
    log = tmp_path / "demo.log"
    port = free_port()
    # When that user runs the demo
    demo = user.popen(
        [f"{user.home}/env/bin/python", "-m", "jupyter_ec2.testing.demo", "--port", str(port)],
        log,
    )
    try:
        found = wait_for_text(log, r"Open: http://127\.0\.0\.1:\d+/lab\?token=(\w+)", demo, 180)
        # Then it says it runs in user mode
        assert f"user mode: sshd runs as {user.name}" in log.read_text()
        # And a launch reaches ready and the remote notebook answers through the proxy
        try:
            instance = launch_to_ready_through_proxy(f"http://127.0.0.1:{port}", found.group(1))
        except AssertionError as error:
            pytest.fail(f"{error}\n{user.diagnostics(log)}")
        # And the provisioning of that instance ran without root, with its state in the user's
        # home (named by its id: the Binder test's instances may have left theirs there too)
        state = user.home / ".local/state/jupyter-ec2" / instance["id"]
        assert (state / "jupyter_server_config.json").is_file(), sorted(state.parent.glob("*"))
    finally:
        end_processes([demo.pid], timeout=20)
        end_processes(user.pids())
    # And the user owns nothing outside its home and the temporary directories
    assert user.files_outside() == []
