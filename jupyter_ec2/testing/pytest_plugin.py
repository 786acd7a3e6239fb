"""pytest fixtures of the jupyter-ec2 harness (enable with ``pytest_plugins``).

- ``jp_ec2_cloud``: the session's :class:`SimulatedCloud` (started once, since moto's first
  request costs about a second), reset before each test, with its client environment applied
  for the test (dummy credentials, ``AWS_ENDPOINT_URL``, the closed proxy). Every client the
  extension builds goes through the cloud's strict front (AWS's documented limits, refused with
  AWS's errors); ``jp_ec2_cloud.set_lag(seconds)`` makes new or just-started instances lag behind
  in describes, and the fixture sets the lag back to 0 before each test;
  ``jp_ec2_cloud.iam_user(policy)`` returns the credentials of a user holding exactly that
  policy, with IAM enforced until the end of the test.
- ``jp_ec2_hosts``: an :class:`InstanceHosts` for the test, closed afterwards (no sshd is left).
- ``jp_ec2_ssh_config``: the path of that harness's ``ssh_config`` file.
- ``jp_ec2_boot_delay`` and ``jp_ec2_login_user``: override these fixtures to change how
  ``jp_ec2_hosts`` boots instances (defaults: no delay, ``root``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cloud import SimulatedCloud
from .hosts import InstanceHosts

# Variables that could make a boto3 client use something other than the simulated cloud.
_AWS_VARIABLES_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@pytest.fixture(scope="session")
def jp_ec2_session_cloud() -> Iterator[SimulatedCloud]:
    """The one SimulatedCloud of the test session (not reset; prefer ``jp_ec2_cloud``)."""
    cloud = SimulatedCloud().start()
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture
def jp_ec2_cloud(
    jp_ec2_session_cloud: SimulatedCloud, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SimulatedCloud]:
    """The simulated cloud, emptied for this test, with its client environment applied.

    No lag and no IAM enforcement at the start; ``jp_ec2_cloud.iam_user(policy)`` turns
    enforcement on for the rest of the test, and it is turned off again afterwards.
    """
    jp_ec2_session_cloud.reset()
    for name in _AWS_VARIABLES_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in jp_ec2_session_cloud.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield jp_ec2_session_cloud
    finally:
        jp_ec2_session_cloud.enforce_iam(False)
        jp_ec2_session_cloud.set_lag(0)


@pytest.fixture
def jp_ec2_boot_delay() -> float:
    """Seconds an instance stays ``pending`` before its host is up (override to change)."""
    return 0.0


@pytest.fixture
def jp_ec2_login_user() -> str:
    """The user the ssh_config logs in as (override to change)."""
    return "root"


@pytest.fixture
def jp_ec2_hosts(
    jp_ec2_cloud: SimulatedCloud,
    tmp_path_factory: pytest.TempPathFactory,
    jp_ec2_boot_delay: float,
    jp_ec2_login_user: str,
) -> Iterator[InstanceHosts]:
    """Instance hosts for this test's instances; every sshd is stopped after the test."""
    hosts = InstanceHosts(
        jp_ec2_cloud,
        tmp_path_factory.mktemp("instance-hosts"),
        boot_delay=jp_ec2_boot_delay,
        login_user=jp_ec2_login_user,
    )
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture
def jp_ec2_ssh_config(jp_ec2_hosts: InstanceHosts) -> Path:
    """The ssh_config file mapping this test's instances to their loopback hosts."""
    return jp_ec2_hosts.ssh_config_path
