"""The port forward against a real OpenSSH sshd on loopback (``SSHHost``).

Fixtures here are shared with ``test_proxy.py``: ``remote_jupyter`` starts a real ``jupyter
server`` (the "remote" notebook) on a free 127.0.0.1 port, and ``run_in_kernel`` executes code
through a kernel websocket. Everything connects to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tornado import httpclient, websocket

from jupyter_ec2.errors import HostKeyMismatchError
from jupyter_ec2.keys import KeyMaterial, generate_ed25519
from jupyter_ec2.proxy import remote_base_url
from jupyter_ec2.testing.hosts import SSHHost
from jupyter_ec2.tunnel import (
    LinkSpec,
    OpenSSHLink,
    SSHTarget,
    TunnelManager,
    TunnelState,
    bind_loopback,
)

INSTANCE_ID = "i-0123456789abcdef0"
LOCAL_BASE_URL = "/user/alice/"
"""The local server's base_url in the proxy tests; the remote server's path extends it."""


# -- helpers shared with test_proxy.py --------------------------------------------------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def thread_count() -> int:
    """Live threads of this process."""
    return threading.active_count()


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def listening_address(port: int) -> str | None:
    """The local address a TCP socket listens on for ``port`` (from /proc/net/tcp*)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if int(hex_port, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                    if len(address) == 8:
                        return socket.inet_ntoa(bytes.fromhex(address)[::-1])
                    return address
    return None


@dataclass
class RemoteJupyter:
    """A real ``jupyter server`` standing in for the notebook on an instance."""

    port: int
    token: str
    base_url: str
    root_dir: Path
    process: subprocess.Popen

    def url(self, port: int | None = None, path: str = "") -> str:
        """``http://127.0.0.1:<port><base_url><path>`` (default: the server's own port)."""
        return f"http://127.0.0.1:{port or self.port}{self.base_url}{path}"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def start_remote_jupyter(workdir: Path, base_url: str) -> RemoteJupyter:
    """Start ``jupyter server`` on a free loopback port with a token; wait until it answers."""
    port, token = free_port(), secrets.token_hex(24)
    root = workdir / "notebooks"
    root.mkdir(parents=True)
    env = {
        **os.environ,
        "JUPYTER_NO_CONFIG": "1",  # no system config.d: only the extensions asked for below
        "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
        "JUPYTER_DATA_DIR": str(workdir / "data"),
        "IPYTHONDIR": str(workdir / "ipython"),
    }
    args = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.base_url={base_url}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.jpserver_extensions",
        "jupyterlab=True",
        "--ServerApp.tornado_settings={'websocket_max_message_size': 1073741824}",
        "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if os.geteuid() == 0:
        args.append("--allow-root")
    log = open(workdir / "jupyter.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    log.close()
    remote = RemoteJupyter(port, token, base_url, root, process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((workdir / "jupyter.log").read_text()[-3000:])
        try:
            request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
                remote.url(path="api/status"), headers={"Authorization": f"token {token}"}
            )
            # A private opener without proxies: urlopen's global one keeps the proxy variables
            # of whichever test called it first (the simulated cloud's closed proxy).
            with _NO_PROXY.open(request, timeout=2):
                return remote
        except OSError:
            time.sleep(0.1)
    stop_process(process)
    raise RuntimeError("The remote jupyter server did not start within 60 s.")


def stop_process(process: subprocess.Popen) -> None:
    """End a process this test started, by PID: SIGTERM, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def run_in_kernel(
    base: str, headers: dict, code: str, *, timeout: float = 60, max_message_size: int = 0
) -> str:
    """Start a kernel at ``base`` (``http://…/<base_url>``), run ``code`` over its websocket,
    return the stdout text, and shut the kernel down."""
    client = httpclient.AsyncHTTPClient(force_instance=True)
    try:
        reply = await client.fetch(
            base + "api/kernels", method="POST", body="{}", headers=headers, request_timeout=60
        )
        kernel_id = json.loads(reply.body)["id"]
        ws_url = "ws" + base[len("http") :] + f"api/kernels/{kernel_id}/channels"
        request = httpclient.HTTPRequest(ws_url, headers=headers, request_timeout=60)
        kwargs = {"max_message_size": max_message_size} if max_message_size else {}
        conn = await websocket.websocket_connect(request, **kwargs)
        try:
            return await asyncio.wait_for(_execute(conn, code), timeout)
        finally:
            conn.close()
            await client.fetch(base + f"api/kernels/{kernel_id}", method="DELETE", headers=headers)
    finally:
        client.close()


async def _execute(conn: websocket.WebSocketClientConnection, code: str) -> str:
    msg_id = uuid.uuid4().hex
    session = uuid.uuid4().hex
    conn.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "test",
                    "session": session,
                    "version": "5.3",
                    "date": "",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": False},
                "buffers": [],
                "channel": "shell",
            }
        )
    )
    output = []
    while True:
        raw = await conn.read_message()
        if raw is None:
            raise ConnectionError("The kernel websocket closed.")
        message = json.loads(raw)
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["header"]["msg_type"]
        if kind == "stream":
            output.append(message["content"]["text"])
        elif kind == "error":
            raise RuntimeError(message["content"]["evalue"])
        elif kind == "status" and message["content"]["execution_state"] == "idle":
            return "".join(output)


# -- fixtures ---------------------------------------------------------------------------------


@dataclass
class HostKeys:
    """The login key pair and the host key of a simulated instance."""

    user_private: str
    user_public: str
    host_private: str


@pytest.fixture(scope="module")
def host_keys() -> HostKeys:
    """Fresh ed25519 keys for the module's hosts."""
    user, host = generate_ed25519(), generate_ed25519()
    return HostKeys(user.private_openssh, user.public_openssh, host.private_openssh)


@pytest.fixture
def ssh_host(tmp_path: Path, host_keys: HostKeys) -> Iterator[SSHHost]:
    """A private sshd on 127.0.0.1 for this test."""
    host = SSHHost(tmp_path / "host", host_keys.host_private, [host_keys.user_public])
    host.start()
    yield host
    host.resume()
    host.stop()


def make_target(host: SSHHost, keys: HostKeys, host_key: str | None = None) -> SSHTarget:
    """How to reach ``host``: its address and port, the login key, the pinned host key."""
    return SSHTarget(
        host="127.0.0.1",
        host_public_key=host_key or host.host_public_key,
        client_key=KeyMaterial(keys.user_private, keys.user_public),
        port=host.port,
        user="root",
    )


@pytest.fixture
def ssh_target(ssh_host: SSHHost, host_keys: HostKeys) -> SSHTarget:
    """How to reach ``ssh_host``: login key and the pinned host key."""
    return make_target(ssh_host, host_keys)


@pytest.fixture(scope="module")
def remote_jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteJupyter]:
    """A real jupyter server whose base_url is the proxied path of ``INSTANCE_ID``."""
    workdir = tmp_path_factory.mktemp("remote-jupyter")
    remote = start_remote_jupyter(workdir, remote_base_url(LOCAL_BASE_URL, INSTANCE_ID))
    yield remote
    stop_process(remote.process)


class Recorder:
    """Records ``on_change`` calls."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    def __call__(self, instance_id: str, state: TunnelState) -> None:
        self.changes.append((instance_id, state.value))


ENGINES = ["openssh", "paramiko"]


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    """Each test of the forward runs on both data paths."""
    return request.param


@pytest.fixture
def manager(engine: str, tmp_path: Path) -> Iterator[TunnelManager]:
    """A TunnelManager with short deadlines, closed after the test."""
    recorder = Recorder()
    tunnels = TunnelManager(
        engine=engine,
        runtime_dir=str(tmp_path / "runtime"),
        on_change=recorder,
        probe_interval=1.0,
        probe_timeout=1.0,
        connect_timeout=3.0,
        backoff_initial=0.1,
        backoff_max=1.0,
    )
    tunnels.recorder = recorder  # type: ignore[attr-defined]
    yield tunnels
    tunnels.close_all()


class EchoServer:
    """A TCP echo server on 127.0.0.1 (a thread per connection), the far end of a forward."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the server thread
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    """A TCP echo server on loopback."""
    server = EchoServer()
    yield server
    server.close()


def refused_or_empty(port: int) -> bool:
    """Whether a connection to the port is refused or closed without an answer, quickly."""
    try:
        return echo_roundtrip(port, b"x") == b""
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def echo_roundtrip(port: int, payload: bytes) -> bytes:
    """Send ``payload`` to ``127.0.0.1:port``, half-close, read everything back."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # the forward may refuse the connection
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        chunks = []
        while data := sock.recv(1 << 20):
            chunks.append(data)
        sender.join()
    return b"".join(chunks)


# -- tests: the forward -----------------------------------------------------------------------


def test_forward_relays_on_loopback_only(manager, ssh_target, echo_server):
    # Given a forward to an echo server behind the instance's sshd
    forward = manager.open(INSTANCE_ID, ssh_target, echo_server.port)
    # Then it is up and its listening socket is bound to 127.0.0.1, nothing else
    assert forward.state == TunnelState.UP
    assert listening_address(forward.local_port) == "127.0.0.1"
    assert forward.to_json() == {"state": "up", "local_port": forward.local_port}
    # When 4 MB cross it both ways / Then they come back intact
    payload = os.urandom(4 * 1024 * 1024)
    echoed = echo_roundtrip(forward.local_port, payload)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


def test_many_simultaneous_connections(manager, ssh_target, echo_server):
    # Given a forward
    forward = manager.open(INSTANCE_ID, ssh_target, echo_server.port)
    results: list[bool] = []

    def client(n: int) -> None:
        payload = os.urandom(50_000 + n)
        results.append(echo_roundtrip(forward.local_port, payload) == payload)

    # When 30 clients use it at the same time
    threads = [threading.Thread(target=client, args=(n,)) for n in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Then every one of them got its own bytes back
    assert results == [True] * 30


def test_requested_port_is_kept_or_replaced_when_taken(manager, ssh_target, echo_server):
    # Given a port remembered from a previous run, free now
    port = free_port()
    # When the forward is opened on it / Then it listens there
    forward = manager.open(INSTANCE_ID, ssh_target, echo_server.port, local_port=port)
    assert forward.local_port == port
    # Given another program holds a port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        # When a forward is asked for it / Then it listens on another free port and works
        other = manager.open("i-00000000000000001", ssh_target, echo_server.port, taken)
        assert other.local_port != taken
        assert echo_roundtrip(other.local_port, b"hello") == b"hello"


def test_wrong_host_key_is_refused_and_leaves_nothing(ssh_host, host_keys, echo_server, manager):
    # Given a target whose pinned host key is not the one the host presents
    target = make_target(ssh_host, host_keys, generate_ed25519().public_openssh)
    threads, fds = thread_count(), fd_count()
    # When the forward is opened / Then it fails with a host key mismatch
    with pytest.raises(HostKeyMismatchError):
        manager.open(INSTANCE_ID, target, echo_server.port)
    # And no forward, thread or socket is left behind (paramiko's transport thread ends a
    # moment after a refused connect closes it: wait for that, briefly)
    assert manager.get(INSTANCE_ID) is None
    assert _wait_until(lambda: thread_count() == threads, 3), (thread_count(), threads)
    assert _wait_until(lambda: fd_count() == fds, 3), (fd_count(), fds)


def test_host_with_new_key_after_reconnect_goes_down(
    manager, ssh_host, ssh_target, echo_server, tmp_path
):
    # Given a forward that is up
    forward = manager.open(INSTANCE_ID, ssh_target, echo_server.port)
    # When the host comes back on the same port with another host key
    port = ssh_host.port
    ssh_host.stop()
    impostor = SSHHost(
        tmp_path / "impostor",
        generate_ed25519().private_openssh,
        ssh_host.authorized_keys,
        port=port,
    ).start()
    try:
        # Then the forward gives up (no retry loop against a wrong key) and frees its port
        assert forward.wait_for(TunnelState.DOWN, 15), forward.state
        assert "host key" in (forward.last_error or "")
        assert listening_address(forward.local_port) is None
    finally:
        impostor.stop()


def test_sshd_killed_then_restarted_reconnects_on_same_port(
    manager, ssh_host, ssh_target, echo_server, host_keys, tmp_path
):
    # Given a forward that is up
    forward = manager.open(INSTANCE_ID, ssh_target, echo_server.port)
    port = forward.local_port
    # When the host's sshd is killed
    ssh_port = ssh_host.port
    ssh_host.stop()
    # Then the forward notices and reconnects
    assert forward.wait_for(TunnelState.RECONNECTING, 5), forward.state
    # And a local connection meanwhile is refused at once rather than hanging
    assert refused_or_empty(port)
    # When sshd starts again (same host key, same port)
    again = SSHHost(
        tmp_path / "again", host_keys.host_private, [host_keys.user_public], port=ssh_port
    ).start()
    try:
        started = time.monotonic()
        # Then the forward is up within 30 s on the same local port, and carries data
        assert forward.wait_for(TunnelState.UP, 30), forward.state
        assert time.monotonic() - started < 30
        assert forward.local_port == port
        assert echo_roundtrip(port, b"after") == b"after"
        states = [state for _, state in manager.recorder.changes]
        assert states == ["up", "reconnecting", "up"]
    finally:
        again.stop()


def test_frozen_host_is_noticed_within_deadline(manager, ssh_host, ssh_target, echo_server):
    # Given a forward that is up, probing every 1 s with a 1 s deadline
    forward = manager.open(INSTANCE_ID, ssh_target, echo_server.port)
    # When the host freezes (SIGSTOP: the TCP connection stays open, nothing answers)
    started = time.monotonic()
    ssh_host.pause()
    # Then the forward notices within probe_interval + probe_timeout (+ slack for this box)
    assert forward.wait_for(TunnelState.RECONNECTING, 6), forward.state
    noticed = time.monotonic() - started
    assert noticed <= manager.probe_interval + manager.probe_timeout + 1.5, noticed
    # When the host thaws / Then the forward is up again and carries data
    ssh_host.resume()
    assert forward.wait_for(TunnelState.UP, 30), forward.state
    assert echo_roundtrip(forward.local_port, b"thawed") == b"thawed"


def test_default_deadline_notices_a_frozen_host_within_15_s(tmp_path):
    # Given the default configuration
    tunnels = TunnelManager()
    # Then a dead host is noticed within about 15 s
    worst = tunnels.probe_interval + tunnels.probe_timeout + tunnels.tick
    assert worst <= 15
    # And the OpenSSH client is told the same: ServerAliveInterval x (CountMax + 1) <= 15 s
    keys = generate_ed25519()
    spec = LinkSpec(
        "i-0123456789abcdef0",
        SSHTarget("127.0.0.1", keys.public_openssh, keys, port=2222, user="u"),
        "127.0.0.1",
        8888,
        40000,
        None,
        "ubuntu",
        tunnels.connect_timeout,
        tunnels.probe_interval,
        tunnels.probe_timeout,
        tuple(tunnels.ciphers),
    )
    argv = OpenSSHLink.command(spec, tmp_path)
    options = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    alive = int(options["ServerAliveInterval"]) * (int(options["ServerAliveCountMax"]) + 1)
    assert alive <= 15
    # And it listens on loopback only, trusts only the pinned key file, reads no user config
    assert "127.0.0.1:40000:127.0.0.1:8888" in argv
    assert options["StrictHostKeyChecking"] == "yes"
    assert options["UserKnownHostsFile"] == str(tmp_path / "known_hosts")
    assert options["GlobalKnownHostsFile"] == os.devnull
    assert options["IdentityAgent"] == "none"
    assert argv[argv.index("-F") + 1] == os.devnull


def test_no_thread_or_fd_leak_across_20_reconnects(manager, ssh_target, echo_server):
    # Given a forward that is up and has carried a connection (lazy imports are done)
    forward = manager.open(INSTANCE_ID, ssh_target, echo_server.port)
    assert echo_roundtrip(forward.local_port, b"warm") == b"warm"
    _settle(forward)
    threads, fds = thread_count(), fd_count()
    # When the SSH connection is dropped and re-established 20 times, with traffic each time
    for cycle in range(20):
        connects = forward.connects
        forward.reconnect()
        assert _wait_until(lambda c=connects: forward.connects > c, 10), cycle
        assert forward.wait_for(TunnelState.UP, 10), cycle
        assert echo_roundtrip(forward.local_port, b"cycle") == b"cycle"
    _settle(forward)
    # Then the thread and file-descriptor counts are back where they started
    assert thread_count() == threads
    assert fd_count() == fds
    assert forward.connects == 21


def test_close_all_releases_port_threads_and_fds(ssh_target, echo_server, engine, tmp_path):
    # Given a manager with two open forwards
    threads, fds = thread_count(), fd_count()
    tunnels = TunnelManager(
        engine=engine, probe_interval=1.0, probe_timeout=1.0, runtime_dir=str(tmp_path)
    )
    first = tunnels.open(INSTANCE_ID, ssh_target, echo_server.port)
    second = tunnels.open("i-00000000000000001", ssh_target, echo_server.port)
    assert echo_roundtrip(first.local_port, b"1") == b"1"
    # When everything is closed
    tunnels.close_all()
    # Then the ports are free, and no thread or descriptor is left
    assert first.state == second.state == TunnelState.DOWN
    assert listening_address(first.local_port) is None
    assert thread_count() == threads
    assert fd_count() == fds
    sock = bind_loopback(first.local_port)  # the port can be taken again at once
    assert sock.getsockname()[1] == first.local_port
    sock.close()


def test_backoff_grows_with_jitter_and_a_cap():
    # Given the backoff policy
    tunnels = TunnelManager(backoff_initial=0.5, backoff_max=8.0)
    # Then each wait is within [ceiling/2, ceiling] and the ceiling doubles up to the cap
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (30, 8.0)]:
        waits = {tunnels.backoff(failures) for _ in range(50)}
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(waits) > 1  # jittered


def test_open_without_waiting_reports_reconnecting_then_up(manager, ssh_target, echo_server):
    # Given a forward opened without waiting for its first connection
    forward = manager.open(INSTANCE_ID, ssh_target, echo_server.port, wait=False)
    # Then it starts reconnecting and comes up on its own
    assert forward.state in (TunnelState.RECONNECTING, TunnelState.UP)
    assert forward.wait_for(TunnelState.UP, 10)
    assert manager.state(INSTANCE_ID) == TunnelState.UP
    manager.close(INSTANCE_ID)
    assert manager.state(INSTANCE_ID) == TunnelState.DOWN


def _wait_until(condition, timeout: float) -> bool:
    """Poll ``condition`` until it holds; False on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _settle(forward, timeout: float = 5.0) -> None:
    """Wait until no relay is busy (paramiko: only the spare channel's threads are left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        link = forward.link
        relays = link.relay_count() if hasattr(link, "relay_count") else 0
        if relays <= 1 and not (link is not None and link.wants_probe()):
            time.sleep(0.2)
            return
        time.sleep(0.02)


# -- tests with a real remote notebook --------------------------------------------------------


def test_kernel_over_forward_survives_sshd_restart(
    manager, ssh_host, ssh_target, remote_jupyter, host_keys, tmp_path
):
    # Given a forward to a real remote jupyter server
    forward = manager.open(INSTANCE_ID, ssh_target, remote_jupyter.port)
    port = forward.local_port
    headers = {"Authorization": f"token {remote_jupyter.token}"}
    base = remote_jupyter.url(port)
    # When a kernel runs print(6*7) over a websocket through the forward / Then it prints 42
    assert asyncio.run(run_in_kernel(base, headers, "print(6*7)")) == "42\n"
    # When sshd is killed and started again on the same port
    ssh_port = ssh_host.port
    ssh_host.stop()
    assert forward.wait_for(TunnelState.RECONNECTING, 5)
    again = SSHHost(
        tmp_path / "again", host_keys.host_private, [host_keys.user_public], port=ssh_port
    ).start()
    try:
        # Then the forward is up within 30 s on the same port and a new kernel websocket works
        assert forward.wait_for(TunnelState.UP, 30)
        assert forward.local_port == port
        assert listening_address(port) == "127.0.0.1"
        assert asyncio.run(run_in_kernel(base, headers, "print(6*7)")) == "42\n"
    finally:
        again.stop()


@pytest.mark.slow
def test_no_leak_across_20_sshd_restarts(manager, ssh_host, ssh_target, echo_server):
    # Given a forward that is up and warmed
    forward = manager.open(INSTANCE_ID, ssh_target, echo_server.port)
    assert echo_roundtrip(forward.local_port, b"warm") == b"warm"
    _settle(forward)
    threads, fds = thread_count(), fd_count()
    # When the host's sshd restarts 20 times (every connection dropped each time)
    for cycle in range(20):
        connects = forward.connects
        ssh_host.restart()
        assert _wait_until(lambda c=connects: forward.connects > c, 30), cycle
        with contextlib.suppress(OSError):
            echo_roundtrip(forward.local_port, b"cycle")
    assert forward.wait_for(TunnelState.UP, 30)
    assert echo_roundtrip(forward.local_port, b"last") == b"last"
    _settle(forward)
    # Then threads and descriptors are back to the baseline
    assert thread_count() == threads
    assert fd_count() == fds


def test_ssh_left_by_a_killed_server_is_ended(ssh_host, host_keys, echo_server, tmp_path):
    # Given a server process whose forward runs an ssh, killed without a chance to clean up
    runtime = tmp_path / "runtime"
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_tunnel import HostKeys, make_target
from jupyter_ec2.tunnel import TunnelManager
class Host:
    port = {ssh_host.port}
    host_public_key = {ssh_host.host_public_key!r}
keys = HostKeys({host_keys.user_private!r}, {host_keys.user_public!r}, "")
tunnels = TunnelManager(engine="openssh", runtime_dir={str(runtime)!r})
forward = tunnels.open({INSTANCE_ID!r}, make_target(Host, keys), {echo_server.port})
print(forward.local_port, flush=True)
time.sleep(120)
"""
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        orphan = int((runtime / f"forward-{INSTANCE_ID}.pid").read_text())
        assert echo_roundtrip(port, b"before") == b"before"
    finally:
        server.kill()
        server.wait()
    assert _alive(orphan)  # its ssh outlived it, holding the port
    # When the next server opens the instance's forward again on the remembered port
    tunnels = TunnelManager(engine="openssh", runtime_dir=str(runtime))
    try:
        forward = tunnels.open(
            INSTANCE_ID, make_target(ssh_host, host_keys), echo_server.port, port
        )
        # Then the orphan ssh (found by its pid file and checked by its command line) is gone,
        # the port is back, and no copy of the private key is left in a temporary directory
        assert _wait_until(lambda: not _alive(orphan), 5)
        assert forward.local_port == port
        assert echo_roundtrip(port, b"after") == b"after"
        assert not forward.link.runtime_dir.exists()
    finally:
        tunnels.close_all()


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
