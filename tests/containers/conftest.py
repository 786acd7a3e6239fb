"""Fixtures of the container suite: instance hosts that are booted systemd containers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jupyter_ec2.testing.containers import ContainerKind, available
from jupyter_ec2.testing.hosts import InstanceHosts

UNAVAILABLE = available()


@pytest.fixture
def jp_ec2_login_user() -> str:
    """The root's login user, as on Debian's images."""
    return "admin"


@pytest.fixture
def jp_ec2_hosts(jp_ec2_cloud, tmp_path_factory, jp_ec2_boot_delay) -> Iterator[InstanceHosts]:
    """Container instance hosts for this test; everything is removed afterwards."""
    if UNAVAILABLE:
        pytest.skip(UNAVAILABLE)
    workdir = tmp_path_factory.mktemp("container-hosts")
    kind = ContainerKind(workdir)
    hosts = InstanceHosts(
        jp_ec2_cloud, workdir, boot_delay=jp_ec2_boot_delay, login_user="admin", host_kind=kind
    )
    try:
        yield hosts
    finally:
        hosts.close()
