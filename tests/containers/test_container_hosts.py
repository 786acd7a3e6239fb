"""The container host kind itself: a booted Debian 12 container per running instance.

Real parts only: moto over HTTP, systemd-nspawn booting systemd and cloud-init from the root that
``make container-root`` builds, the instance's user-data and key pair from a NoCloud seed, and
OpenSSH inside the container reached over the harness's bridge.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from jupyter_ec2.testing.hosts import generate_host_key, public_key_of

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def _user_data(host_key: str) -> str:
    """A cloud-config that pins one ed25519 host key (valid for cloud-init's schema)."""
    indented = "".join(f"    {line}\n" for line in host_key.strip().splitlines())
    return (
        "#cloud-config\nssh_deletekeys: true\nssh_genkeytypes: [ed25519]\n"
        f"ssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {public_key_of(host_key)}\n"
    )


def _ssh(host, key_material: str, pinned: str, timeout: float = 60) -> paramiko.SSHClient:
    """Log in as the image's user, accepting only the pinned host key; retry while booting."""
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(key_material))
    deadline = time.monotonic() + timeout
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(
            host.address,
            "ssh-ed25519",
            paramiko.Ed25519Key(data=base64.b64decode(pinned.split()[1])),
        )
        try:
            client.connect(
                host.address, username="admin", pkey=pkey, timeout=5,
                allow_agent=False, look_for_keys=False,
            )  # fmt: skip
            return client
        except (OSError, paramiko.SSHException):
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, out, _ = client.exec_command(command, timeout=120)
    text = out.read().decode()
    return out.channel.recv_exit_status(), text


def _state(cloud, instance_id: str) -> str:
    found = cloud.client().describe_instances(InstanceIds=[instance_id])
    return found["Reservations"][0]["Instances"][0]["State"]["Name"]


def _wait(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_container_host_boots_applies_user_data_and_follows_the_cloud(jp_ec2_cloud, jp_ec2_hosts):
    # Given an instance launched with a key pair and user-data pinning a host key
    ec2 = jp_ec2_cloud.client()
    pair = ec2.create_key_pair(KeyName="kp", KeyType="ed25519")
    host_key = generate_host_key()
    pinned = public_key_of(host_key)
    image = jp_ec2_cloud.images()[0]["ami_id"]
    launched = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro", KeyName="kp",
        UserData=_user_data(host_key),
    )  # fmt: skip
    instance_id = launched["Instances"][0]["InstanceId"]
    kind = jp_ec2_hosts.host_kind

    # When its container boots
    host = jp_ec2_hosts.wait_for_host(instance_id, timeout=30)
    client = _ssh(host, pair["KeyMaterial"], pinned)
    # Then SSH with the key pair verifies the pinned key, cloud-init ends done, sudo works,
    # the baked host keys are gone and python3 has neither pip nor ensurepip
    code, status = _run(client, "cloud-init status --wait")
    assert code == 0 and "status: done" in status, status
    assert _run(client, "sudo -n id -u") == (0, "0\n")
    _, keys = _run(client, "ls /etc/ssh/")
    assert sorted(k for k in keys.split() if k.startswith("ssh_host_")) == [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ]
    assert _run(client, "python3 -c 'import ensurepip'")[0] != 0
    assert _run(client, "python3 -m pip --version")[0] != 0
    # And apt's daily job holds the dpkg lock after the first boot
    assert _run(client, "systemctl is-active apt-daily-sim")[1].strip() in {"active", "inactive"}
    # And the ssh_config maps the instance's public address to the container
    config = jp_ec2_hosts.ssh_config_path.read_text()
    public_ip = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][
        0
    ]["PublicIpAddress"]
    assert f"Host {public_ip}" in config and f"HostName {host.address}" in config
    # And a connection expecting another host key is refused
    with pytest.raises(paramiko.SSHException):
        _ssh(host, pair["KeyMaterial"], public_key_of(generate_host_key()), timeout=0)
    _run(client, "echo kept | sudo tee /var/tmp/marker >/dev/null")
    client.close()

    # When the instance is stopped and started through the cloud
    ec2.stop_instances(InstanceIds=[instance_id])
    jp_ec2_hosts.wait_for_no_host(instance_id, timeout=60)
    # Then the container is off and its namespace gone, but its disk kept
    assert not host.is_running
    assert host.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                            text=True).stdout  # fmt: skip
    ec2.start_instances(InstanceIds=[instance_id])
    host = jp_ec2_hosts.wait_for_host(instance_id, timeout=30)
    client = _ssh(host, pair["KeyMaterial"], pinned)
    assert _run(client, "cat /var/tmp/marker") == (0, "kept\n")

    # When the instance reboots itself
    boots = host.boots
    _run(client, "sudo systemd-run --on-active=1 systemctl reboot")
    client.close()
    _wait(lambda: host.boots > boots, what="the reboot")
    # Then it is still running in the cloud and comes back with its files
    client = _ssh(host, pair["KeyMaterial"], pinned)
    assert _state(jp_ec2_cloud, instance_id) == "running"
    assert _run(client, "cat /var/tmp/marker") == (0, "kept\n")

    # When it shuts itself down
    _run(client, "sudo systemd-run --on-active=1 shutdown -h now")
    client.close()
    # Then the cloud reports it stopped
    _wait(lambda: _state(jp_ec2_cloud, instance_id) == "stopped", what="stopped")
    jp_ec2_hosts.wait_for_no_host(instance_id, timeout=30)

    # When it is terminated / Then its disk is deleted
    ec2.terminate_instances(InstanceIds=[instance_id])
    _wait(lambda: not host.dir.exists(), timeout=30, what="the disk to go")
    assert kind.host(instance_id) is None


def test_close_leaves_nothing_behind(jp_ec2_cloud, jp_ec2_hosts):
    # Given a running container
    ec2 = jp_ec2_cloud.client()
    image = jp_ec2_cloud.images()[0]["ami_id"]
    launched = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    instance_id = launched["Instances"][0]["InstanceId"]
    host = jp_ec2_hosts.wait_for_host(instance_id, timeout=30)
    kind = jp_ec2_hosts.host_kind
    pid = host.pid
    # When the harness closes
    jp_ec2_hosts.close()
    # Then no process, namespace, veth, bridge, mount or disk is left
    assert not os.path.exists(f"/proc/{pid}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert kind.bridge.name not in links and host.veth not in links
    assert host.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                            text=True).stdout  # fmt: skip
    assert str(host.root) not in Path("/proc/mounts").read_text()
    assert not kind.workdir.exists()
