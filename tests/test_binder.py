"""binder/: what repo2docker does with this repository, minus the image build, as a non-root user.

A user with a random name (removed after the session, also on failure) gets a copy of the source
in its home and a fresh virtual environment made from the system python; as that user, with the
environment first on PATH (as repo2docker's conda environment is), ``pip install -r
binder/requirements.txt`` and ``binder/postBuild`` run (packages from PyPI; this build is
``nonroot_user.repo2docker_user``, shared with ``test_demo_nonroot.py``), then ``binder/start
jupyter lab …`` as Binder's session start would. A launch through the REST API then reaches
``ready`` and the remote notebook answers through the proxy, and the user owns no file outside
its home and the temporary directories.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from nonroot_user import (
    ScratchUser,
    launch_to_ready_through_proxy,
    repo2docker_path,
    wait_for_text,
)

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

BINDER_FILES = ("apt.txt", "requirements.txt", "postBuild", "start")


def test_binder_files_are_there_and_executable():
    # Given the repository's binder directory
    binder = Path(__file__).resolve().parent.parent / "binder"
    # Then repo2docker finds every file it needs, and the hooks are executable
    for name in BINDER_FILES:
        assert (binder / name).is_file(), name
    for hook in ("postBuild", "start"):
        assert os.access(binder / hook, os.X_OK), hook
    assert "openssh-server" in (binder / "apt.txt").read_text().split()
    # And start hands over to the notebook server, as repo2docker's contract says
    assert 'exec "$@"' in (binder / "start").read_text()


def test_postbuild_and_start_as_repo2docker_would(repo2docker_user: ScratchUser, tmp_path: Path):
    # Given a non-root user with a fresh environment first on PATH, in which requirements.txt
    # and postBuild ran as repo2docker runs them (the fixture fails if either fails)
    user, src = repo2docker_user, repo2docker_user.src
    path = repo2docker_path(user)
    # When start runs before JupyterLab
    port, token = free_port(), "binder" + os.urandom(16).hex()
    log = tmp_path / "start.log"
    lab = user.popen(
        [
            f"{src}/binder/start",
            "jupyter",
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        log,
        PATH=path,
    )
    try:
        wait_for_text(log, r"Jupyter Server .* is running at", lab, 240)
        # Then start said the cloud runs in user mode
        assert f"user mode: sshd runs as {user.name}" in log.read_text()
        # And a launch reaches ready and the remote notebook answers through the proxy
        try:
            launch_to_ready_through_proxy(f"http://127.0.0.1:{port}", token)
        except AssertionError as error:
            pytest.fail(f"{error}\n{user.diagnostics(log)}")
    finally:
        end_processes([lab.pid], timeout=20)
        end_processes(user.pids())
    # And the user owns nothing outside its home and the temporary directories
    assert user.files_outside() == []
