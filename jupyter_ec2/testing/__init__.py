"""The test harness of jupyter-ec2: a simulated cloud and instance hosts, all on loopback.

- :class:`SimulatedCloud` serves moto's EC2 on 127.0.0.1 with AWS validation on and current
  Ubuntu LTS images under Canonical's owner id.
- :class:`InstanceHosts` plays EC2 + cloud-init for every running instance: a private ``sshd``
  per instance with the host key from its user-data, mapped in an ``ssh_config`` file.
- :class:`SSHHost` is one such ``sshd``.
- ``jupyter_ec2.testing.pytest_plugin`` provides the ``jp_ec2_*`` fixtures.

Used by the tests and by ``make demo``; needs the ``sim`` extra (moto) and OpenSSH's sshd.
"""

from .cloud import ClosedPort, SimulatedCloud, free_port
from .hosts import InstanceHosts, SSHHost, generate_host_key, parse_user_data, public_key_of
from .images import CANONICAL_OWNER_ID, newest_ubuntu, ubuntu_images

__all__ = [
    "CANONICAL_OWNER_ID",
    "ClosedPort",
    "InstanceHosts",
    "SSHHost",
    "SimulatedCloud",
    "free_port",
    "generate_host_key",
    "newest_ubuntu",
    "parse_user_data",
    "public_key_of",
    "ubuntu_images",
]
