"""Provisioning against instance hosts: a real sshd on 127.0.0.1, the real setup script, a real
``jupyter server`` and the real idle watchdog — all on this machine.

The instance host is this machine, so: every test overrides ``idle_stop_command`` with a
harmless command (``touch`` or an append to a file in the test's tmp dir), every test user
(``jec2t…``) is removed with ``userdel -r``, and every process and file an instance id names is
ended (by PID) or removed — in fixture teardown, also when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import jupyter_ec2.provision
from jupyter_ec2.errors import HostKeyMismatchError, ValidationError
from jupyter_ec2.keys import KeyMaterial, generate_ed25519
from jupyter_ec2.provision import (
    SCRIPT_STEPS,
    ConnectFacts,
    Provisioner,
    ProvisionError,
    ProvisionResult,
    SSHConnectError,
    SSHTarget,
    remote_paths,
)
from jupyter_ec2.provision.ssh import connect
from jupyter_ec2.testing.cloud import ClosedPort, free_port
from jupyter_ec2.testing.hosts import (
    SSHHost,
    end_processes,
    end_processes_with_marker,
    generate_host_key,
    processes_with_marker,
)
from jupyter_ec2.tunnel import TunnelManager

IMAGE_PYTHON = Path("/opt/jupyter-ec2-sim/image-python/bin/python")
WHEELS = Path("/opt/jupyter-ec2-sim/wheels")
STATE_ROOT = Path("/var/lib/jupyter-ec2")

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="instance hosts create users and services: run as root"
    ),
    pytest.mark.skipif(
        not os.access("/usr/sbin/sshd", os.X_OK),
        reason="OpenSSH's sshd is missing: run `make system-deps` (openssh-server)",
    ),
    pytest.mark.skipif(
        not os.access(IMAGE_PYTHON, os.X_OK),
        reason=f"the image interpreter {IMAGE_PYTHON} is missing: run `make sim-image`",
    ),
]

EXISTING = {"kind": "existing", "python": str(IMAGE_PYTHON)}


# -- helpers -------------------------------------------------------------------------------------


def http_get(url: str, token: str | None = None, context: ssl.SSLContext | None = None):
    """(status, body) of a GET on loopback, never through a proxy."""
    handlers: list = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url)  # noqa: S310 - http(s) on loopback only
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def http_post(url: str, token: str, body: dict) -> dict:
    """POST JSON with the token on loopback; the JSON answer."""
    request = urllib.request.Request(  # noqa: S310 - http on loopback only
        url, data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Authorization", f"token {token}")
    request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as answer:
        return json.loads(answer.read())


def wait_for(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.1):
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def read_pid(path: Path) -> int | None:
    """The PID in a pid file, or None."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (and is not a zombie)."""
    if pid is None:
        return False
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] != b"Z"


def process_uid(pid: int) -> int:
    """The real uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # LISTEN
                found.add(address)
    return found


def server_url(result: ProvisionResult, scheme: str = "http") -> str:
    """The remote server's base URL on this machine's loopback (the instance host)."""
    return f"{scheme}://127.0.0.1:{result.port}{result.base_url}"


def user_exists(name: str) -> bool:
    """Whether a local user ``name`` exists."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def user_pids(uid: int) -> list[int]:
    """PIDs of processes running as ``uid`` (a test user's only)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if process_uid(int(entry)) == uid:
                    pids.append(int(entry))
            except (OSError, AssertionError):
                continue
    return pids


def stop_runs(log: Path) -> list[float]:
    """The times the test stop command recorded."""
    if not log.exists():
        return []
    return [float(line) for line in log.read_text().split()]


def recording_stop_command(log: Path) -> str:
    """A harmless stop command that appends the time to ``log`` (no shell involved)."""
    code = "import sys,time; open(sys.argv[1],'a').write(repr(time.time())+chr(10))"
    return shlex.join(["/usr/bin/python3", "-c", code, str(log)])


# -- fixtures ------------------------------------------------------------------------------------


@dataclass
class Leftovers:
    """Every instance id and user the tests create on this machine, removed at the end."""

    instances: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)

    def new(self) -> tuple[str, str]:
        """A fresh instance id and test user name, registered for removal."""
        instance_id = "i-" + secrets.token_hex(9)[:17]
        user = "jec2t" + secrets.token_hex(4)
        self.instances.append(instance_id)
        self.users.append(user)
        return instance_id, user

    def remove(self) -> None:
        """End every process, remove every file and user; then check nothing is left."""
        for instance_id in self.instances:
            end_processes_with_marker(instance_id)
        for user in self.users:
            if user_exists(user):
                uid = pwd.getpwnam(user).pw_uid
                end_processes(user_pids(uid))
                subprocess.run(["userdel", "-r", user], capture_output=True, check=False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/etc/sudoers.d/jupyter-ec2-{user}")
        for instance_id in self.instances:
            shutil.rmtree(STATE_ROOT / instance_id, ignore_errors=True)
            for stage in Path("/tmp").glob(f"jupyter-ec2-{instance_id}-*"):
                shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            STATE_ROOT.rmdir()  # only when empty: other suites may share it
        problems = [u for u in self.users if user_exists(u)]
        problems += [i for i in self.instances if (STATE_ROOT / i).exists()]
        problems += [i for i in self.instances if processes_with_marker(i)]
        assert not problems, f"left behind on this machine: {problems}"


@pytest.fixture(scope="module")
def leftovers() -> Iterator[Leftovers]:
    """The module's registry of created users and instances, cleaned up even on failure."""
    registry = Leftovers()
    try:
        yield registry
    finally:
        registry.remove()


@pytest.fixture(scope="module")
def client_key() -> KeyMaterial:
    """The managed key pair that logs in."""
    return generate_ed25519()


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory, client_key) -> Iterator[SSHHost]:
    """One instance host (a private sshd on loopback) that all instances of the module share."""
    host = SSHHost(
        tmp_path_factory.mktemp("instance-host"),
        generate_host_key(),
        [client_key.public_openssh],
        login_user="root",
    )
    host.start()
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="module")
def target(ssh_host, client_key) -> SSHTarget:
    """The instance host as provisioning reaches it: address, pinned key, managed key."""
    return SSHTarget("127.0.0.1", ssh_host.host_public_key, client_key, port=ssh_host.port)


def make_provisioner(user: str, stop_command: str, **traits) -> Provisioner:
    """A Provisioner for this machine: root login, the image interpreter, a harmless stop."""
    assert "shutdown" not in stop_command and "reboot" not in stop_command
    values = dict(
        login_user="root",
        notebook_user=user,
        environment=EXISTING,
        idle_stop_command=stop_command,
        connect_timeout=20,
        ready_timeout=60,
        # The module's hosts share one sshd whose key the fixtures pin: rotation has its own
        # host and store (test_host_key_is_rotated_after_first_contact).
        rotate_host_key=False,
    )
    values.update(traits)
    return Provisioner(**values)


@dataclass
class Provisioned:
    """One instance provisioned on the module's host."""

    instance_id: str
    user: str
    provisioner: Provisioner
    result: ProvisionResult
    progress: list[tuple[str, int, str]]
    seconds: float


@pytest.fixture(scope="module")
def provisioned(leftovers, target, tmp_path_factory) -> Provisioned:
    """The `existing` kind provisioned once (idle stop after 60 min, harmless command)."""
    instance_id, user = leftovers.new()
    marker = tmp_path_factory.mktemp("stop") / "stopped"
    provisioner = make_provisioner(user, f"touch {marker}")
    progress: list[tuple[str, int, str]] = []
    started = time.monotonic()
    result = provisioner.provision(
        target, instance_id, "/user/tester/", lambda *event: progress.append(event)
    )
    return Provisioned(instance_id, user, provisioner, result, progress, time.monotonic() - started)


def serving(result: ProvisionResult) -> bool:
    """Whether the remote server answers /api/status with the token."""
    try:
        return http_get(server_url(result) + "api/status", result.token)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_serving(result: ProvisionResult, timeout: float = 30) -> None:
    """Wait until the remote server answers /api/status with the token."""
    wait_for(lambda: serving(result), timeout, "the remote server to answer", step=0.2)


# -- full provisioning (existing kind) -----------------------------------------------------------


def test_existing_kind_runs_a_real_jupyter_server_as_the_notebook_user(provisioned):
    # Given an instance provisioned with the `existing` environment kind (fixture)
    result, paths = provisioned.result, remote_paths(provisioned.instance_id)
    account = pwd.getpwnam(provisioned.user)
    wait_until_serving(result)
    # Then a real jupyter server answers /api/status on loopback with the token …
    status, body = http_get(server_url(result) + "api/status", result.token)
    assert status == 200 and "started" in json.loads(body)
    # … and refuses requests without it
    assert http_get(server_url(result) + "api/status")[0] == 403
    assert http_get(server_url(result) + "api/kernels", "wrong" * 10)[0] == 403
    # And it runs as the (non-root) notebook user, listening on 127.0.0.1 only
    server_pid = read_pid(Path(paths.server_pid))
    assert pid_alive(server_pid)
    assert process_uid(server_pid) == account.pw_uid != 0
    cmdline = Path(f"/proc/{server_pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "jupyter_server" in cmdline and provisioned.instance_id in cmdline
    assert listening_addresses(result.port) == {"0100007F"}  # 127.0.0.1, nothing else
    # And the config file is the user's, 0600, binding 127.0.0.1 with the base_url and token
    config_path = Path(paths.config_file)
    info = config_path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == account.pw_uid
    config = json.loads(config_path.read_text())
    assert config["ServerApp"]["ip"] == "127.0.0.1"
    assert config["ServerApp"]["port"] == result.port
    assert config["ServerApp"]["root_dir"] == f"{account.pw_dir}/notebooks"
    assert result.base_url == f"/user/tester/jupyter-ec2/remote/{provisioned.instance_id}/"
    assert config["ServerApp"]["base_url"] == result.base_url
    assert config["IdentityProvider"]["token"] == result.token
    assert len(result.token) >= 43
    # And the notebook user has no password, the managed key, no sudo
    shadow = {
        line.split(":")[0]: line.split(":")[1]
        for line in Path("/etc/shadow").read_text().splitlines()
    }
    assert shadow[provisioned.user] == "*"  # no password can match; not locked for sshd
    assert not Path(f"/etc/sudoers.d/jupyter-ec2-{provisioned.user}").exists()
    assert Path(account.pw_dir, "notebooks").is_dir()
    # And every step ran and changed something where there was something to do
    assert result.steps == SCRIPT_STEPS
    assert {"user", "environment", "config", "service", "watchdog"} <= set(result.changed_steps)
    # And the staging directory is gone
    assert not list(Path("/tmp").glob(f"jupyter-ec2-{provisioned.instance_id}-*"))


def test_managed_key_logs_in_as_the_notebook_user(provisioned, client_key, ssh_host):
    # Given the provisioned notebook user
    home = pwd.getpwnam(provisioned.user).pw_dir
    # Then its authorized_keys holds the managed public key, mode 0600 …
    path = Path(home, ".ssh", "authorized_keys")
    assert client_key.public_openssh.split()[1] in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # … and the managed key logs in as that user (the host's own key file is unreadable to it)
    target = SSHTarget(
        "127.0.0.1", ssh_host.host_public_key, client_key, port=ssh_host.port, user=provisioned.user
    )
    with connect(target, timeout=10) as conn:
        assert conn.run("id -un").lines == [provisioned.user]


def test_progress_streams_every_step_in_order_without_the_token(provisioned):
    # Given the progress events of the first run
    events = provisioned.progress
    # Then every script step was announced in order with rising percentages
    announced = [step for step, _, text in events if text.endswith("…")]
    assert [s for s in announced if s in SCRIPT_STEPS] == list(SCRIPT_STEPS)
    percents = [percent for _, percent, _ in events]
    assert percents == sorted(percents) and percents[-1] == 100
    # And the token never appears in progress or log lines
    token = provisioned.result.token
    assert all(token not in text for _, _, text in events)
    assert all(token not in line for line in provisioned.result.log_lines)


def test_second_run_reports_every_step_unchanged(provisioned, target):
    # Given the provisioned instance and its token
    first = provisioned.result
    # When provisioning runs again with the same settings
    started = time.monotonic()
    again = provisioned.provisioner.provision(
        target, provisioned.instance_id, "/user/tester/", token=first.token
    )
    seconds = time.monotonic() - started
    # Then every step ran and said it had nothing to change; the server stays where it was
    assert again.steps == SCRIPT_STEPS
    assert again.changed_steps == ()
    assert again.port == first.port
    assert again.token == first.token
    wait_until_serving(again)
    print(f"first run {provisioned.seconds:.1f} s, second run {seconds:.1f} s")


def test_killed_server_is_restarted_by_the_supervisor(provisioned):
    # Given the running remote server
    result, paths = provisioned.result, remote_paths(provisioned.instance_id)
    wait_until_serving(result)
    old_pid = read_pid(Path(paths.server_pid))
    assert pid_alive(old_pid)
    # When it is killed (SIGKILL, as a crash)
    os.kill(old_pid, signal.SIGKILL)
    # Then the supervisor starts a new one that answers with the same token and port
    wait_for(
        lambda: read_pid(Path(paths.server_pid)) not in (None, old_pid),
        15,
        "a new server process",
    )
    wait_until_serving(result, timeout=30)
    new_pid = read_pid(Path(paths.server_pid))
    assert pid_alive(new_pid) and new_pid != old_pid


def test_ensure_running_after_a_stop_starts_server_and_watchdog_again(provisioned, target):
    # Given an instance whose processes all ended, as a stop does (by instance id, by PID)
    result, paths = provisioned.result, remote_paths(provisioned.instance_id)
    ended = end_processes_with_marker(provisioned.instance_id)
    assert ended
    assert not serving(result)
    # When the fast path runs after the start
    again = provisioned.provisioner.ensure_running(
        target, provisioned.instance_id, "/user/tester/", result.token
    )
    # Then only the service and the watchdog were (re)started, on the same port
    assert again.changed_steps == ("service", "watchdog")
    assert again.port == result.port
    wait_until_serving(again)
    assert pid_alive(read_pid(Path(paths.watchdog_pid)))


def test_read_idle_status_reports_the_watchdog(provisioned, target):
    # Given the provisioned instance with idle auto-stop after 60 minutes
    # When the manager reads the idle status over SSH
    status = wait_for(
        lambda: provisioned.provisioner.read_idle_status(target, provisioned.instance_id),
        10,
        "the idle status file",
    )
    # Then it says when the instance would stop, about an hour from its last activity
    assert status.enabled and status.server_up and not status.busy
    assert status.stops_at - status.idle_since == pytest.approx(3600)
    assert 55 < status.minutes_left() <= 60
    assert status.get("stops_at") == status.stops_at  # the raw file, dict-style


# -- the idle watchdog ---------------------------------------------------------------------------


def test_watchdog_runs_the_stop_command_after_the_idle_time(leftovers, target, tmp_path):
    # Given an instance with idle auto-stop after 0.05 min (3 s) and a harmless stop command
    # whose arguments look like shell syntax
    instance_id, user = leftovers.new()
    marker, trap = tmp_path / "stopped", tmp_path / "pwned"
    literal = tmp_path / f"$(touch {trap})"
    literal.parent.mkdir(parents=True)  # so `touch` can make the literal path
    command = shlex.join(["touch", str(marker), str(literal)])
    provisioner = make_provisioner(user, command, idle_stop_minutes=0.05)
    result = provisioner.provision(target, instance_id, "/")
    status_file = Path(remote_paths(instance_id).status_file)
    # When nobody uses the server
    first = wait_for(
        lambda: status_file.exists() and json.loads(status_file.read_text()),
        5,
        "the status file",
    )
    # Then the status file says when it will stop …
    assert first["enabled"] is True
    assert first["stops_at"] - first["idle_since"] == pytest.approx(3.0)
    assert first["now"] < first["stops_at"]
    assert stat.S_IMODE(status_file.stat().st_mode) == 0o644
    assert result.token not in status_file.read_text()
    # … and the watchdog runs the command once the idle time has passed, not before
    wait_for(marker.exists, 15, "the stop command")
    assert marker.stat().st_mtime >= first["idle_since"] + 3.0 - 0.05
    # And its words reached `touch` as data: the literal file exists, nothing was executed
    assert literal.exists()
    assert not trap.exists()


async def _execute(
    port: int, base_url: str, token: str, kernel_id: str, code: str, during: Callable[[], None]
) -> dict:
    """Run ``code`` on a kernel over its websocket; call ``during()`` while it runs."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = f"ws://127.0.0.1:{port}{base_url}api/kernels/{kernel_id}/channels"
    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"}))
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": "execute_request",
        "username": "test",
        "session": uuid.uuid4().hex,
        "date": datetime.now(timezone.utc).isoformat(),
        "version": "5.3",
    }
    content = {
        "code": code,
        "silent": False,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    await ws.write_message(
        json.dumps(
            {
                "header": header,
                "parent_header": {},
                "metadata": {},
                "content": content,
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    reply_task = asyncio.ensure_future(_reply(ws, msg_id))
    while not reply_task.done():
        during()
        await asyncio.sleep(0.2)
    ws.close()
    return reply_task.result()


async def _reply(ws, msg_id: str) -> dict:
    while True:
        message = await ws.read_message()
        if message is None:
            raise AssertionError("the kernel websocket closed")
        data = json.loads(message)
        if (
            data.get("msg_type") == "execute_reply"
            and data.get("parent_header", {}).get("msg_id") == msg_id
        ):
            return data


def test_watchdog_waits_while_a_kernel_executes_a_long_cell(leftovers, target, tmp_path):
    # Given an instance with idle auto-stop after 0.05 min (3 s), recording each stop
    instance_id, user = leftovers.new()
    log = tmp_path / "stops"
    provisioner = make_provisioner(user, recording_stop_command(log), idle_stop_minutes=0.05)
    result = provisioner.provision(target, instance_id, "/")
    status_file = Path(remote_paths(instance_id).status_file)
    # When a kernel runs a cell that sleeps 7 s (longer than twice the idle time)
    kernel = http_post(server_url(result) + "api/kernels", result.token, {"name": "python3"})
    busy_seen: list[float] = []

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(status_file.read_text()).get("busy"):
                busy_seen.append(time.time())

    sent = time.time()
    reply = asyncio.run(
        _execute(
            result.port,
            result.base_url,
            result.token,
            kernel["id"],
            "import time; time.sleep(7)",
            watch,
        )
    )
    finished = time.time()
    assert reply["content"]["status"] == "ok"
    # Then the watchdog saw the kernel busy and never ran the stop command meanwhile …
    assert busy_seen, "the watchdog never reported the busy kernel"
    during = [t for t in stop_runs(log) if sent + 1.0 < t < finished]
    assert during == [], f"stop command ran while the kernel was busy: {during}"
    # … and runs it once the kernel has been idle for the idle time
    wait_for(lambda: [t for t in stop_runs(log) if t > finished], 10, "the stop after the cell")
    after = min(t for t in stop_runs(log) if t > finished)
    assert after >= finished + 3.0 - 1.0


# -- trust and validation ------------------------------------------------------------------------


def _new_log(host: SSHHost, offset: int) -> bytes:
    return host.log_path.read_bytes()[offset:]


@pytest.mark.parametrize("pin", ["other-ed25519", "rsa"])
def test_other_host_key_is_refused_before_authentication(leftovers, ssh_host, client_key, pin):
    # Given a host whose key is not the pinned one (another ed25519 key, or another type)
    instance_id, user = leftovers.new()
    if pin == "rsa":
        public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        pinned = public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
    else:
        pinned = generate_ed25519().public_openssh
    wrong = SSHTarget("127.0.0.1", pinned, client_key, port=ssh_host.port)
    offset = ssh_host.log_path.stat().st_size
    provisioner = make_provisioner(user, "touch /nonexistent-never-run")
    # When provisioning connects
    started = time.monotonic()
    with pytest.raises(HostKeyMismatchError) as err:
        provisioner.provision(wrong, instance_id, "/")
    # Then it is refused at once (no retries) …
    assert time.monotonic() - started < 5
    assert "refused before logging in" in err.value.message
    # … the host saw a connection but never an authentication attempt …
    wait_for(lambda: b"[preauth]" in _new_log(ssh_host, offset), 5, "sshd to log the end")
    log = _new_log(ssh_host, offset)
    assert b"Connection from 127.0.0.1" in log
    assert b"publickey" not in log and b"Accepted" not in log
    # … and nothing ran on it
    assert not (STATE_ROOT / instance_id).exists()
    assert not user_exists(user)
    assert not list(Path("/tmp").glob(f"jupyter-ec2-{instance_id}-*"))


MB = "y" * (1024 * 1024)


@pytest.mark.parametrize(
    ("where", "name", "value", "field"),
    [
        ("trait", "notebook_user", "alice; rm -rf /", "notebook_user"),
        ("trait", "notebook_user", "alice\nbob", "notebook_user"),
        ("trait", "idle_stop_command", MB, "idle_stop_command"),
        ("trait", "wheel_dir", "/tmp/$(reboot)", "wheel_dir"),
        (
            "call",
            "environment",
            {"kind": "pip", "packages": ["--index-url http://x"]},
            "environment.packages",
        ),
        (
            "call",
            "environment",
            {"kind": "pip", "packages": ["numpy\nrm -rf /"]},
            "environment.packages",
        ),
        ("call", "environment", {"kind": "pip", "packages": [MB]}, "environment.packages"),
        ("call", "environment", {"kind": "existing", "python": "/x; reboot"}, "environment.python"),
        ("call", "base_url", "/lab\n/", "base_url"),
        ("call", "base_url", "/" + MB + "/", "base_url"),
        ("call", "instance_id", "i-1; rm -rf /", "instance_id"),
        ("call", "token", "short", "token"),
        ("call", "idle_stop_minutes", -3, "idle_stop_minutes"),
    ],
)
def test_hostile_inputs_are_refused_before_anything_runs(
    leftovers, ssh_host, client_key, where, name, value, field
):
    # Given a "host" that counts connections, and one hostile value
    instance_id, user = leftovers.new()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    counted = SSHTarget(
        "127.0.0.1", ssh_host.host_public_key, client_key, port=listener.getsockname()[1]
    )
    provisioner = make_provisioner(user, "touch /nonexistent-never-run")
    call = {"target": counted, "instance_id": instance_id, "base_url": "/"}
    try:
        # When it is configured or passed
        with pytest.raises(ValidationError) as err:
            if where == "trait":
                setattr(provisioner, name, value)
            call[name] = value
            provisioner.provision(**call)
        # Then the error names the field …
        assert err.value.field == field
        assert err.value.status == 400
        # … and nothing connected to the host, nothing was created
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert not user_exists(user)
    assert not (STATE_ROOT / instance_id).exists()


def test_failing_step_names_the_step_and_keeps_its_output(leftovers, target):
    # Given an `existing` interpreter without jupyter_server (Debian's python3)
    instance_id, user = leftovers.new()
    provisioner = make_provisioner(
        user,
        "touch /nonexistent-never-run",
        environment={"kind": "existing", "python": "/usr/bin/python3"},
    )
    steps: list[str] = []
    # When provisioning runs
    with pytest.raises(ProvisionError) as err:
        provisioner.provision(target, instance_id, "/", lambda step, *_: steps.append(step))
    # Then the error names the environment step, says why, and keeps the last lines
    assert err.value.step == "environment"
    assert err.value.status == 502
    assert "cannot import jupyter_server" in err.value.message
    assert any("jupyter_server" in line for line in err.value.output)
    # And no later step ran
    assert "service" not in steps
    assert not Path(remote_paths(instance_id).config_file).exists()


def test_non_root_login_user_runs_the_script_through_sudo(provisioned, leftovers, target):
    # Given a login user that is not root (the provisioned notebook user, which logs in with
    # the managed key) on a host without sudo
    instance_id, user = leftovers.new()
    provisioner = make_provisioner(
        user, "touch /nonexistent-never-run", login_user=provisioned.user
    )
    # When provisioning runs
    with pytest.raises(ProvisionError) as err:
        provisioner.provision(target, instance_id, "/")
    # Then the script was started through sudo, whose absence stops it before any step
    assert err.value.step == "upload"
    assert "sudo" in err.value.message
    assert not user_exists(user)
    assert not (STATE_ROOT / instance_id).exists()


def test_tls_password_port_and_idle_off(leftovers, target):
    # Given TLS, an argon2 password and idle auto-stop off
    from jupyter_server.auth import passwd

    instance_id, user = leftovers.new()
    hashed = passwd("correct horse")
    provisioner = make_provisioner(
        user,
        "touch /nonexistent-never-run",
        tls=True,
        password_hash=hashed,
        idle_stop_minutes=0,
    )
    # When the instance is provisioned on a given port
    port = free_port()
    result = provisioner.provision(target, instance_id, "/", remote_port=port)
    paths = remote_paths(instance_id)
    assert result.port == port
    # Then the server speaks HTTPS with a self-signed cert for 127.0.0.1 whose SHA-256
    # fingerprint was returned …
    cert_pem = Path(paths.tls_cert).read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    assert result.tls_fingerprint == ":".join(digest[i : i + 2] for i in range(0, 64, 2))
    key_info = Path(paths.tls_key).stat()
    assert stat.S_IMODE(key_info.st_mode) == 0o600
    assert key_info.st_uid == pwd.getpwnam(user).pw_uid
    context = ssl.create_default_context(cadata=cert_pem.decode())
    status, _ = http_get(server_url(result, "https") + "api/status", result.token, context)
    assert status == 200
    # … the password hash is in the config …
    config = json.loads(Path(paths.config_file).read_text())
    assert config["PasswordIdentityProvider"]["hashed_password"] == hashed
    # … and with auto-stop off there is no watchdog and no idle status
    assert provisioner.read_idle_status(target, instance_id) is None
    assert not pid_alive(read_pid(Path(paths.watchdog_pid)))


# -- SSH: ssh_config, ProxyJump, deadlines ------------------------------------------------------


def test_ssh_config_maps_the_instance_address_to_loopback(ssh_host, client_key, tmp_path):
    # Given an ssh_config that maps a public-looking address to the loopback host, and sends
    # everything else to a closed loopback port
    closed = ClosedPort()
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host 203.0.113.7\n  HostName 127.0.0.1\n  Port {ssh_host.port}\n  User root\n\n"
        f"Host *\n  HostName 127.0.0.1\n  Port {closed.port}\n"
    )
    try:
        # When connecting to the address with its pinned key
        target = SSHTarget("203.0.113.7", ssh_host.host_public_key, client_key)
        with connect(target, ssh_config_file=config, timeout=10) as conn:
            # Then the session is on the loopback host, as the configured user
            result = conn.run("id -un; echo ok")
        assert result.exit_status == 0
        assert result.lines == ["root", "ok"]
        assert conn.spec.port == ssh_host.port
    finally:
        closed.close()


def test_proxyjump_goes_through_a_pinned_jump_host(ssh_host, client_key, tmp_path):
    # Given a jump host and an ssh_config that reaches the instance through it
    jump = SSHHost(tmp_path / "jump", generate_host_key(), [client_key.public_openssh]).start()
    try:
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host behind\n  HostName 127.0.0.1\n  Port {ssh_host.port}\n  User root\n"
            "  ProxyJump jumpbox\n\n"
            f"Host jumpbox\n  HostName 127.0.0.1\n  Port {jump.port}\n  User root\n"
            f"  UserKnownHostsFile {tmp_path / 'no-known-hosts'}\n"
        )
        pinned = {"jumpbox": jump.host_public_key}
        target = SSHTarget("behind", ssh_host.host_public_key, client_key, jump_host_keys=pinned)
        offset = jump.log_path.stat().st_size
        # When connecting with the jump host pinned
        with connect(target, ssh_config_file=config, timeout=10) as conn:
            lines = conn.run("echo through").lines
        # Then the session went through the jump host
        assert lines == ["through"]
        assert b"Accepted publickey for root" in _new_log(jump, offset)
        # And a jump host with another key, or with no known key, is refused at once
        wrong = SSHTarget(
            "behind",
            ssh_host.host_public_key,
            client_key,
            jump_host_keys={"jumpbox": generate_ed25519().public_openssh},
        )
        with pytest.raises(HostKeyMismatchError):
            connect(wrong, ssh_config_file=config, timeout=10)
        unknown = SSHTarget("behind", ssh_host.host_public_key, client_key)
        with pytest.raises(SSHConnectError, match="no known host key"):
            connect(unknown, ssh_config_file=config, timeout=10)
    finally:
        jump.stop()


def test_connect_retries_while_the_instance_boots(client_key, tmp_path):
    # Given an instance host whose sshd comes up only 1.5 s after the first attempt
    port = free_port()
    host = SSHHost(
        tmp_path / "booting", generate_host_key(), [client_key.public_openssh], port=port
    )
    timer = threading.Timer(1.5, host.start)
    failures: list[str] = []
    target = SSHTarget("127.0.0.1", host.host_public_key, client_key, port=port, user="root")
    timer.start()
    try:
        # When connecting with a deadline longer than the boot
        with connect(target, timeout=20, on_retry=lambda f: failures.append(f.kind)) as conn:
            lines = conn.run("echo up").lines
    finally:
        timer.join()
        host.stop()
    # Then the attempts were refused while it booted, and the session came up after
    assert lines == ["up"]
    assert failures and set(failures) == {"refused"}


def test_unreachable_instance_fails_with_a_diagnosis_not_timed_out(client_key):
    # Given an address where nothing listens, and what the caller knows about the instance
    closed = ClosedPort()
    target = SSHTarget("127.0.0.1", generate_ed25519().public_openssh, client_key, port=closed.port)
    asked: list[bool] = []

    def facts() -> ConnectFacts:
        asked.append(True)
        return ConnectFacts(instance_state="stopped", public_address=None)

    try:
        # When the deadline passes without a session
        with pytest.raises(SSHConnectError) as refused:
            connect(target, timeout=1.0)
        with pytest.raises(SSHConnectError) as stopped:
            connect(target, timeout=1.0, facts=facts)
    finally:
        closed.close()
    # Then the errors explain what was seen, retried with backoff, using the caller's facts
    assert "refused the connection" in refused.value.message
    assert refused.value.failure.kind == "refused"
    assert refused.value.failure.attempts >= 2
    assert "timed out" not in refused.value.message.lower()
    assert "stopped, not running" in stopped.value.message
    assert asked == [True]


# -- the pip kind from a local wheel cache -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not WHEELS.is_dir() or not any(WHEELS.glob("jupyterlab-*.whl")),
    reason=f"the wheel cache {WHEELS} is missing: run `make sim-image`",
)
def test_pip_kind_installs_from_a_local_wheel_cache(leftovers, target):
    # Given the pip kind with no extra packages, installing only from the local wheel cache
    instance_id, user = leftovers.new()
    provisioner = make_provisioner(
        user,
        "touch /nonexistent-never-run",
        environment={"kind": "pip", "packages": []},
        wheel_dir=str(WHEELS),
        idle_stop_minutes=0,
        ready_timeout=120,
    )
    # When the instance is provisioned
    started = time.monotonic()
    result = provisioner.provision(target, instance_id, "/")
    seconds = time.monotonic() - started
    # Then a venv in the notebook user's home has jupyterlab, and its server answers
    home = pwd.getpwnam(user).pw_dir
    venv_python = Path(home, ".jupyter-ec2", instance_id, "venv", "bin", "python")
    assert venv_python.exists()
    check = subprocess.run(
        [str(venv_python), "-c", "import jupyterlab, jupyter_server"],
        capture_output=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    server_pid = read_pid(Path(remote_paths(instance_id).server_pid))
    cmdline = Path(f"/proc/{server_pid}/cmdline").read_bytes().decode(errors="replace")
    assert str(venv_python) in cmdline
    wait_until_serving(result)
    # And a second run installs nothing
    again = provisioner.provision(target, instance_id, "/", token=result.token)
    assert again.changed_steps == ()
    print(f"pip kind: {seconds:.1f} s from the wheel cache")


# -- a host without ensurepip, with apt locked (issue 11) ------------------------------------------


@pytest.fixture(scope="module")
def python_without_ensurepip() -> Iterator[Path]:
    """A real CPython whose standard library lacks ``ensurepip``, as stock Debian and Ubuntu
    ship it (ensurepip is the separate ``python3-venv`` package there).

    Real: Debian's own python3.11 binary (copied) and its own standard library (linked entry by
    entry). Simulated: only the missing module — this machine has python3-venv installed, so
    the copy leaves ``ensurepip`` out instead of uninstalling anything.
    """
    real = Path(os.path.realpath("/usr/bin/python3"))
    stdlib = Path("/usr/lib") / real.name
    root = Path(tempfile.mkdtemp(prefix="jec2-nopip-"))
    try:
        os.chmod(root, 0o755)  # noqa: S103 - the notebook user runs it
        (root / "bin").mkdir(mode=0o755)
        (root / "lib" / real.name).mkdir(mode=0o755, parents=True)
        shutil.copy2(real, root / "bin" / "python3")
        for entry in stdlib.iterdir():
            if entry.name != "ensurepip":
                (root / "lib" / real.name / entry.name).symlink_to(entry)
        python = root / "bin" / "python3"
        check = subprocess.run([str(python), "-c", "import ensurepip"], capture_output=True)
        assert check.returncode != 0, "the copy still has ensurepip"
        yield python
    finally:
        shutil.rmtree(root, ignore_errors=True)


class AptLocks:
    """apt's and dpkg's four locks, under an apt root of a temporary directory, held (fcntl
    write locks, as apt takes them) by a separate process until released, for at least
    ``minimum`` seconds. Never this machine's real /var/lib/dpkg: other work here needs it."""

    HOLDER = (
        "import fcntl, os, sys, time\n"
        "held = []\n"
        "for path in sys.argv[2:]:\n"
        "    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)\n"
        "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    held.append(fd)\n"
        "started = time.monotonic()\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "time.sleep(max(0.0, float(sys.argv[1]) - (time.monotonic() - started)))\n"
    )

    def __init__(self, root: Path, minimum: float):
        self.root = root
        self.paths = [
            root / "var/lib/dpkg/lock-frontend",
            root / "var/lib/dpkg/lock",
            root / "var/lib/apt/lists/lock",
            root / "var/cache/apt/archives/lock",
        ]
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["/usr/bin/python3", "-c", self.HOLDER, str(minimum), *map(str, self.paths)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout.readline().strip() == "locked"

    @property
    def holding(self) -> bool:
        """Whether the holder still runs (and so still holds every lock)."""
        return self.process.poll() is None

    def release(self) -> None:
        """Let the holder go once its minimum is over, and wait for it."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.skipif(
    not any(WHEELS.glob("pip-*.whl")) or not any(WHEELS.glob("jupyterlab-*.whl")),
    reason=f"the wheel cache {WHEELS} lacks pip or jupyterlab: run `make sim-image`",
)
def test_pip_kind_without_ensurepip_succeeds_while_apt_and_dpkg_are_locked(
    leftovers, target, python_without_ensurepip, tmp_path
):
    """The first boot of a stock image: python3 without ensurepip, apt's daily job holding the
    dpkg and apt locks. Real: sshd, the setup script, pip, the venv, the Jupyter server, fcntl
    locks held by another process on apt's own lock file names. Simulated: the interpreter
    lacks ensurepip by construction (see the fixture), and the locks live under an apt root
    in a temporary directory (``c.Provisioner.apt_root``), not this machine's /var/lib/dpkg.
    Without the ensurepip-less bootstrap the environment step has to go to apt, which gives up
    on the held locks (test_apt_fallback_waits_then_names_the_lock_holder shows how)."""
    # Given a host whose python3 has no ensurepip, and apt's four locks held for at least 20 s
    instance_id, user = leftovers.new()
    locks = AptLocks(tmp_path / "apt-root", minimum=20)
    try:
        provisioner = make_provisioner(
            user,
            "touch /nonexistent-never-run",
            environment={"kind": "pip", "packages": []},
            wheel_dir=str(WHEELS),
            base_python=str(python_without_ensurepip),
            apt_root=str(locks.root),
            apt_timeout=5,
            idle_stop_minutes=0,
            ready_timeout=120,
        )
        progress: list[tuple[str, int, str]] = []

        # When the pip kind is provisioned while the locks are held
        result = provisioner.provision(
            target, instance_id, "/", lambda *event: progress.append(event)
        )
        still_locked = locks.holding
    finally:
        locks.release()

    # Then it succeeded without apt, while the locks were held throughout
    assert still_locked
    texts = [text for step, _, text in progress if step == "environment"]
    assert any("has no ensurepip" in text for text in texts), texts
    assert not any("apt" in text.split() or "python3-venv" in text for text in texts), texts
    # And the venv is made from that interpreter, with pip, and serves Jupyter
    home = pwd.getpwnam(user).pw_dir
    venv = Path(home, ".jupyter-ec2", instance_id, "venv")
    config = (venv / "pyvenv.cfg").read_text()
    assert str(python_without_ensurepip.parent) in config
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    wait_until_serving(result)


def test_apt_fallback_waits_then_names_the_lock_holder(
    leftovers, target, python_without_ensurepip, tmp_path
):
    """Where apt is the only way left (no ensurepip, no pip wheel to be had), provisioning
    waits for apt's locks and, giving up, names the holder's pid and command. Real: the setup
    script, fcntl locks held by another process. Simulated: the apt root is a temporary
    directory (the script's lock paths follow ``c.Provisioner.apt_root``), so apt-get itself
    is never reached on this machine."""
    # Given no ensurepip, a wheel directory without pip, and apt's locks held
    instance_id, user = leftovers.new()
    wheels = Path(tempfile.mkdtemp(prefix="jec2-wheels-"))
    os.chmod(wheels, 0o755)  # noqa: S103 - the notebook user reads it
    locks = AptLocks(tmp_path / "apt-root", minimum=0)
    try:
        provisioner = make_provisioner(
            user,
            "touch /nonexistent-never-run",
            environment={"kind": "pip", "packages": []},
            wheel_dir=str(wheels),
            base_python=str(python_without_ensurepip),
            apt_root=str(locks.root),
            apt_timeout=3,
            idle_stop_minutes=0,
        )

        # When the environment step runs
        with pytest.raises(ProvisionError) as failed:
            provisioner.provision(target, instance_id, "/")
    finally:
        locks.release()
        shutil.rmtree(wheels, ignore_errors=True)

    # Then it says pip could not be had, waited for apt, and names who holds the lock
    error = failed.value
    assert error.step == "environment"
    output = "\n".join(error.output)
    assert "holds no pip wheel" in output
    assert "waiting for apt" in output
    assert f"pid {locks.process.pid} (" in str(error)
    assert "fcntl" in str(error)  # the holder's command line
    assert "stayed locked for 3 s" in str(error)


# -- parameter files and pid files (issue 18) ------------------------------------------------------


def test_interrupted_provisioning_leaves_no_parameter_file(leftovers, client_key, tmp_path):
    """The parameter file holds the remote token. Real: sshd, the setup script, its run ended
    mid-way by the host going away (every process of the session gets SIGTERM, as at a power
    loss with an orderly kernel, and the SSH connection drops), so the uploader cannot clean up."""
    # Given a host of its own, and a provisioning run cut off once its first step began
    host = SSHHost(tmp_path / "host", generate_host_key(), [client_key.public_openssh])
    host.start()
    instance_id, user = leftovers.new()
    token = secrets.token_hex(32)
    target = SSHTarget("127.0.0.1", host.host_public_key, client_key, port=host.port)
    provisioner = make_provisioner(user, "touch /nonexistent-never-run", connect_timeout=2)

    def cut(step: str, percent: int, text: str) -> None:
        if step == "user" and host.is_running:
            host.stop()  # the sshd and every process of its sessions, the script included

    # When it runs and is cut off
    try:
        with pytest.raises((ProvisionError, SSHConnectError)):
            provisioner.provision(target, instance_id, "/", cut, token=token)
    finally:
        host.stop()
    wait_for(lambda: not processes_with_marker(instance_id), 10, "the script to end")

    # Then no file under /tmp holds the token: not the upload, not the script's private copy
    holders = []
    for path in Path("/tmp").glob("jupyter-ec2-*/**/*"):
        with contextlib.suppress(OSError):
            if path.is_file() and token.encode() in path.read_bytes():
                holders.append(str(path))
    assert holders == []


def test_root_signals_no_pid_from_a_pid_file_the_notebook_user_wrote(leftovers, target):
    """Real: the setup script as root, a pid file written as the notebook user (who owns the
    run directory), and a root process the forged file points at."""
    # Given a provisioned instance, and a root process whose command line names its state dir
    instance_id, user = leftovers.new()
    provisioner = make_provisioner(user, "touch /nonexistent-never-run", idle_stop_minutes=0)
    provisioner.provision(target, instance_id, "/")
    paths = remote_paths(instance_id)
    victim = subprocess.Popen(
        ["/usr/bin/python3", "-c", "import time; time.sleep(300)", paths.state_dir]
    )
    try:
        # And the notebook user's pid files in its run directory point at that process
        account = pwd.getpwnam(user)
        for name in ("supervisor.pid", "server.pid"):
            forged = Path(paths.run_dir, name)
            forged.write_text(f"{victim.pid}\n")
            os.chown(forged, account.pw_uid, account.pw_gid)

        # When provisioning runs again with a new token (the server must restart)
        result = provisioner.provision(target, instance_id, "/")

        # Then root signalled only its own supervisor: the root process lives, the server answers
        assert victim.poll() is None
        wait_until_serving(result)
        assert Path(paths.supervisor_pid).stat().st_uid == 0
    finally:
        victim.kill()
        victim.wait()


def test_miniforge_checksum_mismatch_is_refused(tmp_path):
    # Given a downloaded installer and its published SHA-256, and a tampered copy
    installer = tmp_path / "Miniforge3-Linux-x86_64.sh"
    installer.write_bytes(b"#!/bin/sh\necho installer\n")
    digest = hashlib.sha256(installer.read_bytes()).hexdigest()
    sums = tmp_path / "Miniforge3-Linux-x86_64.sh.sha256"
    sums.write_text(f"{digest}  Miniforge3-Linux-x86_64.sh\n")
    tampered = tmp_path / "tampered.sh"
    tampered.write_bytes(b"#!/bin/sh\necho evil\n")
    script = Path(jupyter_ec2.provision.__file__).with_name("setup.sh")

    # When the setup script's check compares them
    def check(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["/bin/bash", str(script), "--verify-sha256", str(path), str(sums)],
            capture_output=True,
            text=True,
        )

    good, bad = check(installer), check(tampered)

    # Then the real installer passes and the tampered one is refused with both digests named
    assert good.returncode == 0, good.stdout + good.stderr
    assert bad.returncode != 0
    assert digest in bad.stdout + bad.stderr
    assert "refusing to run it" in bad.stdout + bad.stderr


# -- host key rotation (issue 11) ------------------------------------------------------------------


def test_host_key_is_rotated_after_first_contact(leftovers, client_key, tmp_path):
    """Real: OpenSSH's sshd reading its HostKey file, the setup script making the new key with
    ssh-keygen on the host and sending sshd SIGHUP (as `systemctl reload ssh` does), paramiko
    and the state store on disk. The host's key file and pid file are those of a private sshd
    (c.Provisioner.sshd_host_key_file / sshd_pid_file) instead of /etc/ssh and /run."""
    from jupyter_ec2.store import StateStore

    # Given an instance host with the handed-over key pinned in a state store
    handed_over = generate_host_key()
    host = SSHHost(tmp_path / "host", handed_over, [client_key.public_openssh])
    host.start()
    try:
        instance_id, user = leftovers.new()
        store = StateStore(tmp_path / "state")
        store.pin_host_key(instance_id, host.host_public_key)
        old_key = " ".join(host.host_public_key.split()[:2])
        target = SSHTarget("127.0.0.1", old_key, client_key, port=host.port)
        provisioner = make_provisioner(
            user,
            "touch /nonexistent-never-run",
            idle_stop_minutes=0,
            rotate_host_key=True,
            sshd_host_key_file=str(host.host_key_path),
            sshd_pid_file=str(host.pid_path),
            store=store,
        )

        # When it is provisioned
        result = provisioner.provision(target, instance_id, "/")

        # Then a new key made on the host is pinned, and it is the one sshd now reads
        new_key = store.pinned_host_key(instance_id)
        assert new_key is not None and new_key != old_key
        assert result.host_public_key == new_key
        assert store.retired_host_key(instance_id) == old_key
        assert store.pending_host_key(instance_id) is None
        assert host.host_key_path.read_text() != handed_over
        assert "host-key" in result.changed_steps
        # And the handed-over key no longer authenticates the instance
        with pytest.raises(HostKeyMismatchError):
            connect(target, default_user="root", timeout=5)
        with connect(
            dataclasses.replace(target, host_public_key=new_key), default_user="root", timeout=10
        ):
            pass
        # And after a local restart (a new store on the same directory) the pin is still there,
        # and provisioning again connects with it and rotates nothing
        again_store = StateStore(tmp_path / "state")
        assert again_store.pinned_host_key(instance_id) == new_key
        provisioner.store = again_store
        again = provisioner.provision(target, instance_id, "/", token=result.token)
        assert again.host_public_key == new_key
        assert again.changed_steps == ()
        # And a forward opened with the launch-time target writes the rotated key into its
        # known_hosts (the store's pin), so it comes up and carries the remote server
        tunnels = TunnelManager(store=again_store, default_user="root", runtime_dir="")
        try:
            forward = tunnels.open(instance_id, target, again.port)
            url = f"http://127.0.0.1:{forward.local_port}{again.base_url}api/status"
            assert http_get(url, again.token)[0] == 200
        finally:
            tunnels.close_all()
    finally:
        host.stop()


def test_rotation_cut_short_after_the_switch_is_finished_on_the_next_run(
    leftovers, client_key, tmp_path
):
    """The crash window: the instance switched to the new key, the local side never heard it
    worked. Real: sshd, the script, the store; the cut is a store left as the crash leaves it."""
    from jupyter_ec2.store import StateStore

    # Given a host that already answers with a new key pinned as coming, the old one still pinned
    host = SSHHost(tmp_path / "host", generate_host_key(), [client_key.public_openssh])
    old_key = " ".join(host.host_public_key.split()[:2])
    coming = generate_host_key()
    host.host_key_path.parent.mkdir(mode=0o700, parents=True)
    host._key = serialization.load_ssh_private_key(coming.encode(), password=None)
    host.start()
    try:
        instance_id, user = leftovers.new()
        store = StateStore(tmp_path / "state")
        store.pin_host_key(instance_id, old_key)
        coming_key = " ".join(host.host_public_key.split()[:2])
        store.begin_host_key_rotation(instance_id, old_key, coming_key)
        provisioner = make_provisioner(
            user,
            "touch /nonexistent-never-run",
            idle_stop_minutes=0,
            rotate_host_key=True,
            sshd_host_key_file=str(host.host_key_path),
            sshd_pid_file=str(host.pid_path),
            store=store,
        )
        target = SSHTarget("127.0.0.1", old_key, client_key, port=host.port)

        # When provisioning runs
        result = provisioner.provision(target, instance_id, "/")

        # Then the coming key became the pin, and no second rotation was made
        assert store.pinned_host_key(instance_id) == coming_key == result.host_public_key
        assert store.retired_host_key(instance_id) == old_key
        assert "host-key" not in result.changed_steps
    finally:
        host.stop()
