"""Self-tests of the test harness: the simulated cloud, the instance hosts and the socket guard.

Each test proves one promise the other tests rely on: instances boot into loopback sshd hosts
with the pinned host key, addresses resolve only to loopback, stop/start behave like EC2, AWS
validation is on, and nothing can leave the machine.
"""

from __future__ import annotations

import base64
import gzip
import io
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
import paramiko
import pytest
import pytest_socket
import yaml
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytest_socket import SocketBlockedError, SocketConnectBlockedError

from jupyter_ec2.testing import (
    CANONICAL_OWNER_ID,
    InstanceHosts,
    SimulatedCloud,
    SSHHost,
    generate_host_key,
    newest_ubuntu,
    parse_user_data,
    public_key_of,
)


@dataclass
class KeyPair:
    """An ed25519 key pair as OpenSSH texts."""

    private: str
    public: str

    def pkey(self) -> paramiko.PKey:
        """The private half for paramiko."""
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private))


def make_key_pair() -> KeyPair:
    """A fresh ed25519 key pair."""
    private = generate_host_key()
    return KeyPair(private, public_key_of(private))


def cloud_config(host_key: KeyPair) -> str:
    """The user-data the extension sends: cloud-config with a pinned ed25519 host key."""
    body = {
        "ssh_keys": {"ed25519_private": host_key.private, "ed25519_public": host_key.public},
        "ssh_genkeytypes": [],
    }
    return "#cloud-config\n" + yaml.safe_dump(body)


def launch(cloud: SimulatedCloud, user_key: KeyPair, host_key: KeyPair | None) -> dict:
    """Import the user's key and launch one noble instance; return its description."""
    ec2 = cloud.client()
    ec2.import_key_pair(KeyName="user-key", PublicKeyMaterial=user_key.public.encode())
    params = {
        "ImageId": newest_ubuntu("24.04", "x86_64")["ami_id"],
        "InstanceType": "t3.micro",
        "KeyName": "user-key",
        "MinCount": 1,
        "MaxCount": 1,
    }
    if host_key is not None:
        params["UserData"] = cloud_config(host_key)
    return ec2.run_instances(**params)["Instances"][0]


def describe(cloud: SimulatedCloud, instance_id: str) -> dict:
    """The instance's current description."""
    answer = cloud.client().describe_instances(InstanceIds=[instance_id])
    return answer["Reservations"][0]["Instances"][0]


def resolve(ssh_config: Path, address: str) -> tuple[str, int, str | None]:
    """Where the ssh_config sends ``address``: (hostname, port, user)."""
    entry = paramiko.SSHConfig.from_path(str(ssh_config)).lookup(address)
    return entry["hostname"], int(entry["port"]), entry.get("user")


def pinned_client(host_public_key: str, port: int) -> paramiko.SSHClient:
    """An SSH client that knows only ``host_public_key`` for 127.0.0.1:port and rejects others."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_type, blob = host_public_key.split()[:2]
    client.get_host_keys().add(
        f"[127.0.0.1]:{port}", key_type, paramiko.Ed25519Key(data=base64.b64decode(blob))
    )
    return client


def connect(client: paramiko.SSHClient, port: int, user: str, key: KeyPair, **kwargs) -> None:
    """Connect with only ``key``, asking only for an ed25519 host key."""
    client.connect(
        "127.0.0.1",
        port=port,
        username=user,
        pkey=key.pkey(),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
        disabled_algorithms={"keys": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]},
        **kwargs,
    )


def run(client: paramiko.SSHClient, command: str) -> str:
    """Run ``command`` and return its stdout."""
    _, stdout, _ = client.exec_command(command, timeout=10)
    return stdout.read().decode()


def refused(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:port is refused."""
    with socket.socket() as sock:
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


# -- the simulated cloud ----------------------------------------------------------------------


def test_canonical_images_cover_current_lts_on_both_architectures(jp_ec2_cloud):
    # Given the simulated cloud
    ec2 = jp_ec2_cloud.client()
    # When listing Canonical's images
    images = ec2.describe_images(Owners=[CANONICAL_OWNER_ID])["Images"]
    # Then jammy and noble server builds exist for x86_64 and arm64, at least two dates each
    for series, version in (("jammy", "22.04"), ("noble", "24.04")):
        for arch, uarch in (("x86_64", "amd64"), ("arm64", "arm64")):
            builds = [
                image
                for image in images
                if f"/ubuntu-{series}-{version}-{uarch}-server-" in image["Name"]
                and image["Name"].startswith("ubuntu/images/")
                and image["Architecture"] == arch
            ]
            assert len({image["CreationDate"] for image in builds}) >= 2, (series, arch)
            newest = max(builds, key=lambda image: image["CreationDate"])
            assert newest["ImageId"] == newest_ubuntu(version, arch)["ami_id"]
    # And the name filter a resolver uses works with wildcards
    noble = ec2.describe_images(
        Owners=[CANONICAL_OWNER_ID],
        Filters=[
            {"Name": "name", "Values": ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-*"]},
            {"Name": "architecture", "Values": ["arm64"]},
        ],
    )["Images"]
    assert noble and all("arm64" in image["Name"] for image in noble)


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"InstanceType": "t9.nonsense"}, "InvalidInstanceType.NotFound"),
        ({"ImageId": "ami-0123456789abcdef0"}, "InvalidAMIID.NotFound"),
        ({"KeyName": "no-such-key"}, "InvalidKeyPair.NotFound"),
    ],
)
def test_aws_validation_is_on(jp_ec2_cloud, override, code):
    # Given a launch request with one bad field
    params = {
        "ImageId": newest_ubuntu()["ami_id"],
        "InstanceType": "t3.micro",
        "MinCount": 1,
        "MaxCount": 1,
        **override,
    }
    ec2 = jp_ec2_cloud.client()
    # When launching it
    with pytest.raises(ClientError) as error:
        ec2.run_instances(**params)
    # Then AWS's error comes back and nothing was launched
    assert error.value.response["Error"]["Code"] == code
    assert ec2.describe_instances()["Reservations"] == []


def test_environment_points_only_at_loopback(jp_ec2_cloud):
    # Given the environment the fixture applied
    env = jp_ec2_cloud.env()
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    # When a boto3 client is built the default way (no endpoint_url)
    ec2 = boto3.client("ec2")
    # Then it reaches the simulated cloud
    assert ec2.describe_images(Owners=[CANONICAL_OWNER_ID])["Images"]
    # And a stray HTTP request for another host fails at once on the closed proxy
    started = time.monotonic()
    with pytest.raises(urllib.error.URLError) as error:
        # A fresh opener reads the proxy variables now (urlopen's global one would keep them
        # for every later caller in this process).
        urllib.request.build_opener().open("http://198.51.100.7/", timeout=5)
    assert isinstance(error.value.reason, ConnectionRefusedError)
    assert time.monotonic() - started < 2


def test_default_clients_go_through_the_strict_front(jp_ec2_cloud):
    # Given the environment the fixture applied (AWS_ENDPOINT_URL)
    assert jp_ec2_cloud.env()["AWS_ENDPOINT_URL"] == jp_ec2_cloud.endpoint_url
    assert jp_ec2_cloud.endpoint_url != jp_ec2_cloud.moto_endpoint_url
    # When a client built the default way sends what AWS refuses
    ec2 = boto3.client("ec2")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    with pytest.raises(ClientError) as error:
        ec2.create_security_group(GroupName="g", Description="it's mine", VpcId=vpc)
    # Then the front refused it with AWS's code, and moto never saw it
    assert error.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert jp_ec2_cloud.front.refusals[-1].rule == "security group description"
    groups = jp_ec2_cloud.client().describe_security_groups()["SecurityGroups"]
    assert "g" not in {g["GroupName"] for g in groups}


def test_lag_and_iam_are_off_at_the_start_of_each_test(jp_ec2_cloud):
    # Given a fresh test / Then nothing hides instances and IAM is not enforced
    import math

    import moto.settings

    assert jp_ec2_cloud.front.lag == 0
    assert math.isinf(moto.settings.INITIAL_NO_AUTH_ACTION_COUNT)
    assert boto3.client("ec2").describe_vpcs()["Vpcs"]


def test_reset_forgets_resources_but_keeps_images(jp_ec2_cloud):
    # Given an imported key
    ec2 = jp_ec2_cloud.client()
    ec2.import_key_pair(KeyName="k", PublicKeyMaterial=make_key_pair().public.encode())
    # When the cloud is reset
    jp_ec2_cloud.reset()
    # Then the key is gone and the images are still there
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    assert len(ec2.describe_images(Owners=[CANONICAL_OWNER_ID])["Images"]) >= 8


@pytest.mark.filterwarnings("ignore:A test tried to use socket")
def test_socket_guard_blocks_non_loopback_addresses():
    # Given pytest-socket's --allow-hosts guard from pyproject.toml
    # When a socket connects to a TEST-NET address (never actually reached)
    blocked = (SocketBlockedError, SocketConnectBlockedError)  # the latter under --allow-hosts
    # (refuse to try at all when the guard is off, e.g. under `-o addopts=`: a SYN would leave)
    assert socket.socket.connect is not pytest_socket._true_connect, "the socket guard is off"
    with socket.socket() as sock, pytest.raises(blocked):
        sock.connect(("192.0.2.1", 22))
    # Then the guard raised before any packet could leave


# -- instance hosts ---------------------------------------------------------------------------


def test_instance_host_comes_up_with_the_pinned_key(jp_ec2_cloud, jp_ec2_hosts, jp_ec2_ssh_config):
    # Given an instance launched with a host key in its cloud-config
    user_key, host_key = make_key_pair(), make_key_pair()
    instance = launch(jp_ec2_cloud, user_key, host_key)
    # When its host comes up
    host = jp_ec2_hosts.wait_for_host(instance["InstanceId"])
    assert host.host_public_key == host_key.public
    # Then every address of the instance resolves to that loopback host
    for address in (
        instance["PublicIpAddress"],
        instance["PrivateIpAddress"],
        instance["PublicDnsName"],
        instance["PrivateDnsName"],
        instance["InstanceId"],
    ):
        assert resolve(jp_ec2_ssh_config, address) == ("127.0.0.1", host.port, "root")
    # And paramiko verifies the pinned host key, logs in with the key pair and runs a command
    hostname, port, user = resolve(jp_ec2_ssh_config, instance["PublicIpAddress"])
    client = pinned_client(host_key.public, port)
    try:
        connect(client, port, user, user_key)
        assert run(client, "echo ok").strip() == "ok"
    finally:
        client.close()


def test_host_with_another_key_is_refused(jp_ec2_cloud, jp_ec2_hosts, jp_ec2_ssh_config):
    # Given an instance whose host presents another key than the one the client pinned
    user_key, pinned, actual = make_key_pair(), make_key_pair(), make_key_pair()
    instance = launch(jp_ec2_cloud, user_key, actual)
    host = jp_ec2_hosts.wait_for_host(instance["InstanceId"])
    _, port, user = resolve(jp_ec2_ssh_config, instance["PublicIpAddress"])
    client = pinned_client(pinned.public, port)
    # When connecting
    with pytest.raises(paramiko.BadHostKeyException):
        connect(client, port, user, user_key)
    # Then nothing was authenticated
    transport = client.get_transport()
    assert transport is None or not transport.is_authenticated()
    client.close()
    assert "Accepted publickey" not in host.log_path.read_text()
    # And a client that knows no key for the host refuses it too
    unknown = paramiko.SSHClient()
    unknown.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        connect(unknown, port, user, user_key)
    unknown.close()


def test_instance_without_host_key_gets_a_generated_one(jp_ec2_cloud, jp_ec2_hosts):
    # Given an instance launched without user-data
    instance = launch(jp_ec2_cloud, make_key_pair(), host_key=None)
    # When its host comes up
    host = jp_ec2_hosts.wait_for_host(instance["InstanceId"])
    # Then it presents a fresh ed25519 key, the same after a restart of the instance
    assert host.host_public_key.startswith("ssh-ed25519 ")
    ec2 = jp_ec2_cloud.client()
    ec2.stop_instances(InstanceIds=[instance["InstanceId"]])
    jp_ec2_hosts.wait_for_no_host(instance["InstanceId"])
    ec2.start_instances(InstanceIds=[instance["InstanceId"]])
    again = jp_ec2_hosts.wait_for_host(instance["InstanceId"])
    assert again.host_public_key == host.host_public_key


def test_stop_ends_the_host_and_the_instance_processes(
    jp_ec2_cloud, jp_ec2_hosts, jp_ec2_ssh_config
):
    # Given a running instance and a process started for it (its id in the command line)
    instance = launch(jp_ec2_cloud, make_key_pair(), make_key_pair())
    instance_id = instance["InstanceId"]
    host = jp_ec2_hosts.wait_for_host(instance_id)
    old_port, old_ip = host.port, instance["PublicIpAddress"]
    marker_code = "import time; time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", marker_code, f"/srv/{instance_id}/x"])
    try:
        # When the instance is stopped in the cloud
        jp_ec2_cloud.client().stop_instances(InstanceIds=[instance_id])
        jp_ec2_hosts.wait_for_no_host(instance_id)
        # Then its sshd is gone and the process was ended
        assert refused(old_port)
        assert process.wait(timeout=5) is not None
        # And its old address now falls to the catch-all closed port
        assert resolve(jp_ec2_ssh_config, old_ip)[1] == jp_ec2_hosts.closed_port
        assert instance_id not in jp_ec2_ssh_config.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_start_comes_back_on_a_new_port_and_address(jp_ec2_cloud, jp_ec2_hosts, jp_ec2_ssh_config):
    # Given an instance that ran once and was stopped
    user_key, host_key = make_key_pair(), make_key_pair()
    instance = launch(jp_ec2_cloud, user_key, host_key)
    instance_id = instance["InstanceId"]
    first = jp_ec2_hosts.wait_for_host(instance_id)
    first_port, first_ip = first.port, instance["PublicIpAddress"]
    ec2 = jp_ec2_cloud.client()
    ec2.stop_instances(InstanceIds=[instance_id])
    jp_ec2_hosts.wait_for_no_host(instance_id)
    # When it is started again
    ec2.start_instances(InstanceIds=[instance_id])
    second = jp_ec2_hosts.wait_for_host(instance_id)
    # Then it has a new public address and its host listens on a new port
    new_ip = describe(jp_ec2_cloud, instance_id)["PublicIpAddress"]
    assert new_ip != first_ip
    assert second.port != first_port
    _, port, user = resolve(jp_ec2_ssh_config, new_ip)
    assert port == second.port
    # And the same pinned key and key pair still work
    client = pinned_client(host_key.public, port)
    try:
        connect(client, port, user, user_key)
        assert run(client, "echo ok").strip() == "ok"
    finally:
        client.close()


def test_stop_and_start_between_two_polls_is_a_reboot(jp_ec2_cloud, tmp_path):
    # Given a running instance, its host and one of its processes (no background poller)
    with InstanceHosts(jp_ec2_cloud, tmp_path, poll_interval=None) as hosts:
        instance_id = launch(jp_ec2_cloud, make_key_pair(), make_key_pair())["InstanceId"]
        first = hosts.wait_for_host(instance_id)
        first_port = first.port
        code = "import time; time.sleep(60)"
        process = subprocess.Popen([sys.executable, "-c", code, instance_id])
        try:
            # When it is stopped and started before the harness looks again
            ec2 = jp_ec2_cloud.client()
            ec2.stop_instances(InstanceIds=[instance_id])
            ec2.start_instances(InstanceIds=[instance_id])
            hosts.sync()
            # Then the harness saw the reboot: old processes ended, a new host on a new port
            assert process.wait(timeout=5) is not None
            second = hosts.host_for(instance_id)
            assert second is not None and second is not first
            assert second.port != first_port and refused(first_port)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_catch_all_entry_points_at_a_closed_loopback_port(jp_ec2_hosts, jp_ec2_ssh_config):
    # Given the harness's ssh_config with no instance running
    # When resolving an address no instance has
    hostname, port, _ = resolve(jp_ec2_ssh_config, "203.0.113.9")
    # Then it maps to loopback, on a port that refuses connections
    assert (hostname, port) == ("127.0.0.1", jp_ec2_hosts.closed_port)
    assert refused(port)


def test_later_users_log_in_with_the_instance_key(jp_ec2_cloud, jp_ec2_hosts):
    # Given a running instance host
    user_key, host_key = make_key_pair(), make_key_pair()
    instance = launch(jp_ec2_cloud, user_key, host_key)
    host = jp_ec2_hosts.wait_for_host(instance["InstanceId"])
    # When another existing user (as the notebook user would be) logs in with the instance key
    client = pinned_client(host_key.public, host.port)
    try:
        connect(client, host.port, "nobody", user_key)
        # Then the login is accepted
        assert client.get_transport().is_authenticated()
    finally:
        client.close()
    # And a key that is not the instance's is refused
    stranger = pinned_client(host_key.public, host.port)
    with pytest.raises(paramiko.AuthenticationException):
        connect(stranger, host.port, "root", make_key_pair())
    stranger.close()


def test_boot_delay_holds_the_instance_in_pending(jp_ec2_cloud, tmp_path):
    # Given instance hosts that take a second to boot an instance (synced by hand, no poller)
    with InstanceHosts(jp_ec2_cloud, tmp_path, boot_delay=1.0, poll_interval=None) as hosts:
        launched = time.monotonic()
        instance = launch(jp_ec2_cloud, make_key_pair(), make_key_pair())
        instance_id = instance["InstanceId"]
        # When the instance has just been launched
        hosts.sync()
        # Then it reads pending and has no host
        assert describe(jp_ec2_cloud, instance_id)["State"]["Name"] == "pending"
        assert hosts.host_for(instance_id) is None
        # And once the delay passed it reads running, with its host up
        host = hosts.wait_for_host(instance_id, timeout=10)
        assert time.monotonic() - launched >= 1.0
        assert describe(jp_ec2_cloud, instance_id)["State"]["Name"] == "running"
        assert not refused(host.port)
        # And a start of the running instance changes nothing, as on EC2
        ec2 = jp_ec2_cloud.client()
        ec2.start_instances(InstanceIds=[instance_id])
        hosts.sync()
        assert hosts.host_for(instance_id) is host
        # And a stop then start reads pending again before the host is back
        ec2.stop_instances(InstanceIds=[instance_id])
        ec2.start_instances(InstanceIds=[instance_id])
        hosts.sync()
        assert describe(jp_ec2_cloud, instance_id)["State"]["Name"] == "pending"
        assert hosts.host_for(instance_id) is None and not host.is_running
        # And the EC2 waiter sees it running once booted
        hosts.wait_for_host(instance_id, timeout=10)
        waiter = ec2.get_waiter("instance_running")
        waiter.wait(InstanceIds=[instance_id], WaiterConfig={"Delay": 1, "MaxAttempts": 5})


def test_close_leaves_no_sshd(jp_ec2_cloud, tmp_path):
    # Given instance hosts serving two instances
    hosts = InstanceHosts(jp_ec2_cloud, tmp_path, poll_interval=None)
    user_key = make_key_pair()
    first = launch(jp_ec2_cloud, user_key, make_key_pair())
    second = jp_ec2_cloud.client().run_instances(
        ImageId=newest_ubuntu("22.04", "arm64")["ami_id"],
        InstanceType="t4g.micro",
        KeyName="user-key",
        MinCount=1,
        MaxCount=1,
    )["Instances"][0]
    pids = [hosts.wait_for_host(instance["InstanceId"]).pid for instance in (first, second)]
    # When the harness closes
    hosts.close()
    # Then every sshd it started has ended
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


# -- one SSHHost ------------------------------------------------------------------------------


def test_ssh_host_pause_freezes_and_resume_thaws(tmp_path):
    # Given a running SSHHost
    user_key, host_key = make_key_pair(), make_key_pair()
    with SSHHost(tmp_path, host_key.private, [user_key.public]) as host:
        # When it is paused
        host.pause()
        client = pinned_client(host_key.public, host.port)
        # Then a connection gets no SSH banner (the host is frozen, not down)
        with pytest.raises(paramiko.SSHException):
            connect(client, host.port, "root", user_key, banner_timeout=0.5)
        client.close()
        # And after resume it answers again
        host.resume()
        client = pinned_client(host_key.public, host.port)
        try:
            connect(client, host.port, "root", user_key)
            assert run(client, "echo ok").strip() == "ok"
        finally:
            client.close()


def test_ssh_host_restart_keeps_its_port(tmp_path):
    # Given a running SSHHost
    user_key, host_key = make_key_pair(), make_key_pair()
    host = SSHHost(tmp_path, host_key.private, [user_key.public]).start()
    try:
        port, pid = host.port, host.pid
        # When it restarts
        host.restart()
        # Then it is a new process on the same port
        assert host.port == port and host.pid != pid
        assert not refused(port)
    finally:
        host.stop()
    # And once stopped the port refuses connections
    assert refused(port)


# -- cloud-config parsing ---------------------------------------------------------------------


def test_user_data_formats_are_understood():
    # Given the same cloud-config as plain text, gzip and MIME multipart
    text = "#cloud-config\nssh_keys:\n  ed25519_public: x\n"
    mime = (
        'Content-Type: multipart/mixed; boundary="B"\nMIME-Version: 1.0\n\n--B\n'
        'Content-Type: text/cloud-config; charset="us-ascii"\n\n' + text + "--B--\n"
    )
    # When parsing each
    parsed = [parse_user_data(raw) for raw in (text.encode(), gzip.compress(text.encode()))]
    parsed.append(parse_user_data(mime.encode()))
    # Then each yields the same document, and a shell script yields nothing
    assert all(doc == {"ssh_keys": {"ed25519_public": "x"}} for doc in parsed)
    assert parse_user_data(b"#!/bin/sh\necho hi\n") == {}


def test_generated_host_keys_are_ed25519():
    # Given a generated host key
    private = generate_host_key()
    # When loading it
    key = serialization.load_ssh_private_key(private.encode(), password=None)
    # Then it is ed25519 and its public line matches
    assert isinstance(key, Ed25519PrivateKey)
    assert public_key_of(private).startswith("ssh-ed25519 ")
