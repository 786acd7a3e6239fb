"""Benchmark of the port forward and the proxy, side by side in one run, on loopback only.

Usage::

    .venv/bin/python bench/bench_forward.py [--size-mb 200] [--rounds 5] [--requests 400]

One private OpenSSH ``sshd`` on 127.0.0.1 (``SSHHost``) plays the instance. Behind it: a real
``jupyter server`` (``/api/status``, kernel websockets) and a tiny HTTP server that writes
every response in two pieces, headers then body (``/big``: the download; ``/small``: a small
response) — the pattern that exposes the Nagle/delayed-ACK stall. Each path is measured in
its own process so that no two share a GIL with the measuring client:

- ``direct``: no forward;
- ``ssh -N -L``: the OpenSSH client (private ``-F`` config, ``known_hosts`` pinned to the host
  key — never the user's files);
- ``ssh -L +pty``: the same with a pty session open (``-tt … cat``);
- ``ours``: :class:`jupyter_ec2.tunnel.TunnelManager` (default engine: the OpenSSH client);
- ``ours/paramiko``: the same with ``engine="paramiko"`` (the in-process Python data path);
- ``control``: a second ``ssh -L +pty``, identical to the first: the noise floor of ratios;
- ``proxy``: a local ``jupyter server`` with :mod:`jupyter_ec2.proxy` routes and a
  TunnelManager in the same process (as in production), reached as a browser reaches it:
  with the login cookie the local server set after one request with its token;
- ``asyncssh`` (only with ``--asyncssh`` and the package installed): an alternative data path.

Rounds are interleaved (every path once per round) so that the noise of a shared machine falls
on all of them alike; figures are medians. It prints the figures, then the ratios against the
targets of issue 5. Every loop is bounded. Nothing connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent))

INSTANCE_TINY = "i-00000000000000b01"
INSTANCE_JUPYTER = "i-00000000000000b02"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and every live descendant (e.g. its ssh)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, (0, 0.0))[1]
        todo += [child for child, (parent, _) in stats.items() if parent == current]
    return total


# -- child process roles ----------------------------------------------------------------------


def serve_tiny(port: int) -> None:
    """An HTTP/1.1 server writing headers and body separately: ``…/big`` and ``…/small``."""
    size = int(os.environ["BENCH_SIZE"])
    block = bytes(1 << 20)

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        with contextlib.suppress(OSError), conn:
            while True:
                line = reader.readline()
                if not line:
                    return
                path = line.split()[1]
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass
                big = path.endswith(b"/big")
                length = size if big else 17
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: %d\r\n\r\n" % length
                )
                if not big:
                    time.sleep(0.0002)  # a second write, as a framework flushing the body
                    conn.sendall(b"small response ok")
                    continue
                left = length
                while left:
                    n = min(left, len(block))
                    conn.sendall(memoryview(block)[:n])
                    left -= n

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _target(spec: dict):
    from jupyter_ec2.keys import read_private_key
    from jupyter_ec2.tunnel import SSHTarget

    return SSHTarget(
        host="127.0.0.1",
        host_public_key=spec["host_key"],
        client_key=read_private_key(Path(spec["key_file"])),
        port=spec["ssh_port"],
        user=spec["user"],
    )


def serve_ours(spec: dict) -> None:
    """Our forwards (tiny server and jupyter) in this process; print their ports."""
    from jupyter_ec2.tunnel import TunnelManager

    tunnels = TunnelManager(engine=spec.get("engine", "auto"), runtime_dir=spec["workdir"])
    target = _target(spec)
    tiny = tunnels.open(INSTANCE_TINY, target, spec["tiny_port"])
    jupyter = tunnels.open(INSTANCE_JUPYTER, target, spec["jupyter_port"])
    print(json.dumps({"tiny": tiny.local_port, "jupyter": jupyter.local_port}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # close the forwards on the way out
    try:
        sys.stdin.read()
    finally:
        tunnels.close_all()


def serve_asyncssh(spec: dict) -> None:
    """asyncssh forwards (aes128-gcm, a pty session open), for comparison."""
    import asyncssh

    async def main() -> None:
        conn = await asyncssh.connect(
            "127.0.0.1",
            spec["ssh_port"],
            username=spec["user"],
            client_keys=[asyncssh.import_private_key(Path(spec["key_file"]).read_text())],
            known_hosts=asyncssh.import_known_hosts(
                f"[127.0.0.1]:{spec['ssh_port']} {spec['host_key']}\n"
            ),
            encryption_algs=["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"],
            config=[],
        )
        await conn.create_process("cat", term_type="dumb")
        tiny = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", spec["tiny_port"])
        jup = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", spec["jupyter_port"])
        print(json.dumps({"tiny": tiny.get_port(), "jupyter": jup.get_port()}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        conn.close()

    asyncio.run(main())


def serve_proxy(spec: dict) -> None:
    """A local jupyter server with the remote routes, over our forwards in this process."""
    from jupyter_server.serverapp import ServerApp

    from jupyter_ec2.proxy import LOOKUP_SETTING, RemoteEndpoint, remote_handlers
    from jupyter_ec2.tunnel import TunnelManager

    tunnels = TunnelManager(runtime_dir=str(Path(spec["workdir"]) / "proxy"))
    target = _target(spec)
    tunnels.open(INSTANCE_TINY, target, spec["tiny_port"])
    tunnels.open(INSTANCE_JUPYTER, target, spec["jupyter_port"])
    tokens = {INSTANCE_TINY: "unused", INSTANCE_JUPYTER: spec["jupyter_token"]}

    def lookup(instance_id: str) -> RemoteEndpoint | None:
        forward = tunnels.get(instance_id)
        if forward is None:
            return None
        return RemoteEndpoint(forward.local_port, tokens[instance_id], state=forward.state.value)

    app = ServerApp()
    app.initialize(
        argv=[
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={spec['proxy_port']}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={spec['local_token']}",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_unauthenticated_access=False",
            f"--ServerApp.root_dir={spec['workdir']}",
            "--ServerApp.log_level=WARN",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ]
    )
    app.web_app.add_handlers(".*$", remote_handlers(app.base_url))
    app.web_app.settings[LOOKUP_SETTING] = lookup
    try:
        app.start()  # returns when SIGTERM stops the server
    finally:
        tunnels.close_all()


# -- the measuring client ---------------------------------------------------------------------


def http_get(port: int, path: str, headers: dict, sock: socket.socket | None = None) -> int:
    """One GET on ``sock`` (or a new connection); read the body into a reused buffer."""
    own = sock is None
    if own:
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the headers")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lengths = [
        line.split(b":", 1)[1]
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    if status != 200 or not lengths:
        raise RuntimeError(f"GET {path}: {head.decode(errors='replace')[:300]}")
    left = int(lengths[0]) - len(rest)
    buffer = memoryview(bytearray(1 << 20))
    while left > 0:
        got = sock.recv_into(buffer, min(left, len(buffer)))
        if not got:
            raise ConnectionError("closed mid-body")
        left -= got
    if own:
        sock.close()
    return int(lengths[0])


def login_cookie(port: int, token: str) -> str:
    """Log in to the local server once with its token; its login cookie, as a browser keeps it."""
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
        f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
        for header in reply.headers.get_all("Set-Cookie") or []:
            name_value = header.split(";", 1)[0]
            if name_value.startswith("username-"):
                return name_value
    raise RuntimeError("the local server set no login cookie")


@dataclass
class Path_:
    """One way to reach the remote servers, and what was measured through it."""

    name: str
    tiny_port: int
    jupyter_port: int
    prefix: str = ""  # path prefix on the local side (the proxy's route)
    headers: dict = field(default_factory=dict)
    pid: int | None = None  # the process doing the forwarding (for CPU figures)
    jupyter_headers: dict = field(default_factory=dict)
    mbps: list[float] = field(default_factory=list)
    cpu_per_gb: list[float] = field(default_factory=list)
    small_new: list[float] = field(default_factory=list)
    small_ka: list[float] = field(default_factory=list)
    status_new: list[float] = field(default_factory=list)
    status_ka: list[float] = field(default_factory=list)
    ws_rtt: list[float] = field(default_factory=list)

    def tiny(self, what: str) -> str:
        """The path of ``what`` on the tiny server, as seen through this path."""
        return f"{self.prefix}{INSTANCE_TINY}/{what}" if self.prefix else f"/{what}"

    def status(self, jupyter_base: str) -> str:
        """The path of jupyter's ``/api/status``."""
        return f"{jupyter_base}api/status"


def median(values: list[float]) -> float:
    """The median, NaN for nothing."""
    return statistics.median(values) if values else float("nan")


def measure_download(path: Path_) -> None:
    """One download of the big file: MB/s and the forwarding processes' CPU per GB."""
    cpu0 = cpu_seconds(path.pid) if path.pid else 0.0
    start = time.perf_counter()
    size = http_get(path.tiny_port, path.tiny("big"), path.headers)
    elapsed = time.perf_counter() - start
    path.mbps.append(size / elapsed / 1e6)
    if path.pid:
        path.cpu_per_gb.append((cpu_seconds(path.pid) - cpu0) / size * 1e9)


BATCH = 5
"""Requests per path before the next path: fine interleaving spreads the machine's drift."""


class LatencyProbe:
    """Latency of every path, measured in small interleaved batches.

    Keep-alive connections and websockets stay open for the whole run, one per path and kind;
    each batch sends :data:`BATCH` requests through each path in turn.
    """

    def __init__(self, paths: list[Path_], jupyter_base: str, ws_urls: dict[str, str]):
        self.paths = paths
        self.jupyter_base = jupyter_base
        self.ws_urls = ws_urls
        self.kept: dict[tuple[str, str], socket.socket] = {}
        self.rng = random.Random(5)
        self.websockets: dict[str, object] = {}

    def _shuffled(self) -> list[Path_]:
        """The paths in a new random order (no path always follows the same one)."""
        order = list(self.paths)
        self.rng.shuffle(order)
        return order

    def _kinds(self, path: Path_):
        yield "small", path.tiny_port, path.tiny("small"), path.headers
        yield "status", path.jupyter_port, path.status(self.jupyter_base), path.jupyter_headers

    def http_batches(self, batches: int, record: bool = True) -> None:
        """``batches`` rounds of BATCH requests of each kind, new and kept-alive, per path."""
        for _ in range(batches):
            for path in self._shuffled():
                for kind, port, target, headers in self._kinds(path):
                    new, ka = getattr(path, f"{kind}_new"), getattr(path, f"{kind}_ka")
                    sock = self.kept.get((path.name, kind))
                    if sock is None:
                        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        http_get(port, target, headers, sock)  # warm it up
                        self.kept[(path.name, kind)] = sock
                    for _ in range(BATCH):
                        start = time.perf_counter()
                        http_get(port, target, headers)
                        elapsed = (time.perf_counter() - start) * 1e3
                        start = time.perf_counter()
                        http_get(port, target, headers, sock)
                        if record:
                            new.append(elapsed)
                            ka.append((time.perf_counter() - start) * 1e3)

    async def ws_batches(self, batches: int) -> None:
        """``batches`` rounds of BATCH keystroke round trips per path (terminal websocket)."""
        from tornado import httpclient, websocket

        for path in self.paths:
            if path.name not in self.websockets:
                request = httpclient.HTTPRequest(
                    self.ws_urls[path.name], headers=path.jupyter_headers, request_timeout=60
                )
                conn = await websocket.websocket_connect(request)
                self.websockets[path.name] = conn
                for _ in range(5):  # warm up
                    await self._keystroke(conn)
        for _ in range(batches):
            for path in self._shuffled():
                conn = self.websockets[path.name]
                for _ in range(BATCH):
                    path.ws_rtt.append(await self._keystroke(conn))

    @staticmethod
    async def _keystroke(conn) -> float:
        start = time.perf_counter()
        conn.write_message(json.dumps(["stdin", "x"]))
        while True:
            raw = await asyncio.wait_for(conn.read_message(), 30)
            if raw is None:
                raise ConnectionError("websocket closed")
            kind, *rest = json.loads(raw)
            if kind == "stdout" and "x" in (rest[0] if rest else ""):
                return (time.perf_counter() - start) * 1e3

    def close(self) -> None:
        """Close every kept-alive connection and websocket."""
        for sock in self.kept.values():
            sock.close()
        for conn in self.websockets.values():
            conn.close()


# -- orchestration ----------------------------------------------------------------------------


class Bench:
    """Starts every process (and stops each by its PID), runs the rounds, prints the report."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-forward-"))
        self.procs: list[subprocess.Popen] = []
        self.host = None

    # processes

    def spawn(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start a process (remembered, so that it is ended by its PID at the end)."""
        proc = subprocess.Popen(argv, **kwargs)
        self.procs.append(proc)
        return proc

    def role(self, role: str, spec: dict, stdout=subprocess.PIPE) -> subprocess.Popen:
        """Run this file in a child process in one of its roles."""
        env = {**os.environ, "BENCH_SPEC": json.dumps(spec), "JUPYTER_NO_CONFIG": "1"}
        return self.spawn(
            [sys.executable, str(HERE), "--role", role],
            env=env,
            stdin=subprocess.PIPE,
            stdout=stdout,
            text=True,
        )

    def close(self) -> None:
        """End every process started here (SIGTERM, then SIGKILL), the host, the files."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.host is not None:
            self.host.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # setup

    def start(self) -> list[Path_]:
        """The host, the far ends and every path to them."""
        from jupyter_ec2.keys import generate_ed25519
        from jupyter_ec2.proxy import remote_base_url
        from jupyter_ec2.testing.hosts import SSHHost

        user_key, host_key = generate_ed25519(), generate_ed25519()
        self.host = SSHHost(
            self.workdir / "host", host_key.private_openssh, [user_key.public_openssh]
        )
        self.host.start()
        key_file = self.workdir / "id_ed25519"
        key_file.write_text(user_key.private_openssh)
        key_file.chmod(0o600)

        # The far ends: the tiny server and a real jupyter server.
        tiny_port = free_port()
        self.spawn(
            [sys.executable, str(HERE), "--role", "tiny", "--port", str(tiny_port)],
            env={**os.environ, "BENCH_SIZE": str(self.args.size_mb * 1_000_000)},
        )
        jupyter_port, jupyter_token = free_port(), secrets.token_hex(24)
        self.jupyter_base = remote_base_url("/", INSTANCE_JUPYTER)
        root = self.workdir / "notebooks"
        root.mkdir()
        self.spawn(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={jupyter_port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={jupyter_token}",
                f"--ServerApp.base_url={self.jupyter_base}",
                f"--ServerApp.root_dir={root}",
                "--ServerApp.log_level=WARN",
                "--ServerApp.jpserver_extensions",
                "jupyter_server_terminals=True",
                # A terminal running cat: the pty echoes a keystroke at once (no shell rc files).
                "--ServerApp.terminado_settings={'shell_command': ['cat']}",
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            env={
                **os.environ,
                "JUPYTER_NO_CONFIG": "1",
                "JUPYTER_RUNTIME_DIR": str(self.workdir / "runtime"),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(tiny_port)
        wait_port(jupyter_port, 60)
        self.jupyter_token = jupyter_token
        self.jupyter_port = jupyter_port
        jupyter_headers = {"Authorization": f"token {jupyter_token}"}

        spec = {
            "user": "root",
            "key_file": str(key_file),
            "host_key": self.host.host_public_key,
            "ssh_port": self.host.port,
            "tiny_port": tiny_port,
            "jupyter_port": jupyter_port,
            "jupyter_token": jupyter_token,
            "workdir": str(self.workdir),
        }
        paths = [Path_("direct", tiny_port, jupyter_port, jupyter_headers=jupyter_headers)]

        # OpenSSH: a private config and known_hosts pinned to the host key.
        config = self.workdir / "ssh_config"
        config.write_text("# empty: nothing from ~/.ssh or /etc/ssh/ssh_config\n")
        known_hosts = self.workdir / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{self.host.port} {self.host.host_public_key}\n")
        # The second "+pty" is a control: an identical setup, whose ratio to the first shows
        # how far two equal paths differ on this machine (the noise floor of the ratios).
        for name, pty in (("ssh -N -L", False), ("ssh -L +pty", True), ("control", True)):
            local_tiny, local_jupyter = free_port(), free_port()
            argv = [
                "ssh", "-F", str(config), "-i", str(key_file),
                "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
                "-p", str(self.host.port),
                "-L", f"127.0.0.1:{local_tiny}:127.0.0.1:{tiny_port}",
                "-L", f"127.0.0.1:{local_jupyter}:127.0.0.1:{jupyter_port}",
            ]  # fmt: skip
            argv += ["-tt", "root@127.0.0.1", "cat"] if pty else ["-N", "root@127.0.0.1"]
            proc = self.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            wait_port(local_tiny)
            wait_port(local_jupyter)
            paths.append(
                Path_(
                    name, local_tiny, local_jupyter, pid=proc.pid, jupyter_headers=jupyter_headers
                )
            )

        engines = [("ours", "openssh"), ("ours/paramiko", "paramiko")]
        for name, engine in engines:
            ours = self.role("ours", {**spec, "engine": engine})
            ports = json.loads(ours.stdout.readline())
            paths.append(
                Path_(name, ports["tiny"], ports["jupyter"], pid=ours.pid,
                      jupyter_headers=jupyter_headers)
            )  # fmt: skip

        if self.args.asyncssh:
            alt = self.role("asyncssh", spec)
            ports = json.loads(alt.stdout.readline())
            paths.append(
                Path_("asyncssh", ports["tiny"], ports["jupyter"], pid=alt.pid,
                      jupyter_headers=jupyter_headers)
            )  # fmt: skip

        spec["proxy_port"], spec["local_token"] = free_port(), secrets.token_hex(24)
        proxy = self.role("proxy", spec, stdout=subprocess.DEVNULL)
        wait_port(spec["proxy_port"], 60)
        local = {"Cookie": login_cookie(spec["proxy_port"], spec["local_token"])}
        paths.append(
            Path_("proxy", spec["proxy_port"], spec["proxy_port"], prefix="/jupyter-ec2/remote/",
                  headers=local, pid=proxy.pid, jupyter_headers=local)
        )  # fmt: skip
        return paths

    def start_terminal(self) -> str:
        """A new terminal on the remote jupyter server; its name."""
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            f"http://127.0.0.1:{self.jupyter_port}{self.jupyter_base}api/terminals",
            data=b"{}",
            headers={"Authorization": f"token {self.jupyter_token}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as reply:  # noqa: S310
            return json.loads(reply.read())["name"]

    # the run

    def run(self) -> None:
        """Start everything, measure in interleaved rounds, print the report."""
        paths = self.start()
        args = self.args
        # One terminal per path: a terminal sends its output to every websocket attached.
        ws_urls = {
            p.name: f"ws://127.0.0.1:{p.jupyter_port}{self.jupyter_base}terminals/websocket/"
            f"{self.start_terminal()}"
            for p in paths
        }
        probe = LatencyProbe(paths, self.jupyter_base, ws_urls)
        batches = max(1, args.requests // args.rounds // BATCH)
        loop = asyncio.new_event_loop()
        try:
            probe.http_batches(1, record=False)  # warm-up: lazy imports, first connections
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
                for path in paths:
                    measure_download(path)
                probe.http_batches(batches)
                loop.run_until_complete(probe.ws_batches(max(1, batches // 2)))
        finally:
            probe.close()
            loop.close()
        self.report(paths)

    def report(self, paths: list[Path_]) -> None:
        """Print the figures, then every ratio against its target."""
        args = self.args
        print(
            f"\nbench_forward: {args.size_mb} MB download x {args.rounds} rounds, "
            f"{args.requests} requests per latency kind, medians; {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.1f}\n"
        )
        header = (
            f"{'path':<14} {'MB/s':>6} {'cpu s/GB':>8} {'small new':>10} {'small ka':>9} "
            f"{'status new':>11} {'status ka':>10} {'ws rtt':>7}"
        )
        print(header)
        print("-" * len(header))
        by = {p.name: p for p in paths}
        for p in paths:
            cpu = f"{median(p.cpu_per_gb):8.2f}" if p.cpu_per_gb else f"{'-':>8}"
            print(
                f"{p.name:<14} {median(p.mbps):6.0f} {cpu} {median(p.small_new):10.3f} "
                f"{median(p.small_ka):9.3f} {median(p.status_new):11.3f} "
                f"{median(p.status_ka):10.3f} {median(p.ws_rtt):7.3f}"
            )
        print(
            "(ms per request; new = a new connection each, ka = keep-alive; small = a response "
            "written\n in two pieces; status = jupyter /api/status; ws rtt = a keystroke echoed "
            "over a\n terminal websocket; cpu = CPU seconds per GB of the forwarding process tree;"
            "\n control = a second, identical ssh -L +pty: its ratios show the noise)\n"
        )

        def ratio(a: list[float], b: list[float]) -> float:
            return median(a) / median(b)

        def tolerance(noise: float) -> float:
            # How far two identical paths were apart (at least 5%): closer than that is a tie.
            return max(abs(1 - noise), 0.05)

        ssh, pty, control, proxy = by["ssh -N -L"], by["ssh -L +pty"], by["control"], by["proxy"]
        print(f"{'ratio or difference':<40} {'value':>6}  target   met   noise")
        alternatives = [p for p in ("ours", "ours/paramiko", "asyncssh") if p in by]
        for name in alternatives:
            path = by[name]
            rows = [
                (f"{name}: throughput / ssh -N -L", ratio(path.mbps, ssh.mbps), ">=", 0.9,
                 ratio(control.mbps, pty.mbps)),
            ]  # fmt: skip
            for kind in ("small_new", "small_ka", "status_new", "status_ka", "ws_rtt"):
                rows.append(
                    (
                        f"{name}: {kind.replace('_', ' ')} / ssh+pty",
                        ratio(getattr(path, kind), getattr(pty, kind)),
                        "<=",
                        1.0,
                        ratio(getattr(control, kind), getattr(pty, kind)),
                    )
                )
            for label, value, op, target, noise in rows:
                self._row(label, value, op, target, f"{noise:5.2f}", tolerance(noise))
            print()
        ours = by["ours"]
        for kind in ("status_ka", "small_ka", "ws_rtt", "status_new"):
            added = median(getattr(proxy, kind)) - median(getattr(ours, kind))
            self._row(f"proxy: added ms, {kind.replace('_', ' ')}", added, "<", 1.0, "")
        self._row("proxy: throughput / ours", ratio(proxy.mbps, ours.mbps), ">=", 0.7, "")
        print(
            "\n(noise = the same ratio for the control against ssh -L +pty, two identical paths; "
            "'tie' = a\n miss by less than that distance from 1 (at least 5%): not a measured "
            "difference)"
        )
        print(
            f"Nagle stall without a pty: small ka ssh -N -L / ssh -L +pty = "
            f"{ratio(ssh.small_ka, pty.small_ka):.0f}x; ssh -N -L / direct throughput = "
            f"{ratio(ssh.mbps, by['direct'].mbps):.2f}"
        )

    @staticmethod
    def _row(
        label: str, value: float, op: str, target: float, noise: str, tolerance: float = 0.0
    ) -> None:
        met = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
        tie = not met and abs(value - target) <= tolerance
        verdict = "yes" if met else "tie" if tie else "NO"
        print(f"{label:<40} {value:6.2f}  {op} {target:<4}  {verdict:<4} {noise}")


def main() -> None:
    """Run a role, or the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="download size (MB)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--requests", type=int, default=400, help="requests per latency kind")
    parser.add_argument("--asyncssh", action="store_true", help="also measure asyncssh")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "tiny":
        serve_tiny(args.port)
        return
    if args.role:
        spec = json.loads(os.environ["BENCH_SPEC"])
        {"ours": serve_ours, "asyncssh": serve_asyncssh, "proxy": serve_proxy}[args.role](spec)
        return
    if args.asyncssh:
        try:
            import asyncssh  # noqa: F401
        except ImportError:
            parser.error("--asyncssh needs the asyncssh package")
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.close()


if __name__ == "__main__":
    main()
