"""The port forward: a loopback-only port per instance, carried over SSH, that heals itself.

One :class:`Forward` per instance, made by :meth:`TunnelManager.open`, has

- a local port on ``127.0.0.1`` only, which stays the same across reconnects (the forward holds
  it whenever its SSH link does not) and which a caller may ask for, e.g. the port remembered
  from a previous run;
- one SSH link at a time (:class:`SSHLink`), with the instance's pinned host key checked on
  every (re)connect, that carries each local connection as a ``direct-tcpip`` channel to the
  remote Jupyter port;
- a supervisor thread that probes the link with its own deadline, notices a dead or frozen
  host within ``probe_interval + probe_timeout`` seconds, and reconnects with exponential
  backoff and jitter.

Its state is ``up``, ``reconnecting`` or ``down``; every change is reported to
``on_change(instance_id, state)``. The API is synchronous (the manager calls it from worker
threads), and nothing leaks across reconnects: every thread, process and descriptor a link
made ends with it.

Two data paths implement :class:`SSHLink` (``TunnelManager.engine``):

``openssh`` (default when an ``ssh`` client is installed)
    The system OpenSSH client, ``ssh -L 127.0.0.1:PORT:…`` with a private config (``-F``), a
    ``known_hosts`` file holding only the pinned key, ``StrictHostKeyChecking=yes``, and a pty
    session kept open (``-tt`` running ``cat``). It carries data in C: measured here it matches
    ``ssh -N -L`` in throughput and OpenSSH-with-a-pty in latency, which no Python SSH stack
    does (``bench/bench_forward.py``). Liveness: ``ServerAliveInterval``/``CountMax`` — a
    keepalive request with its own deadline, after which the client exits.
``paramiko``
    :func:`jupyter_ec2.provision.ssh.connect` (pinned key, ssh_config, ProxyJump) on a
    ``TCP_NODELAY`` socket, one pty session kept open, and two relay threads per connection. A
    ``direct-tcpip`` channel is kept open ahead of need, so a new local connection costs no SSH
    round trip; opening it, with a deadline, is the liveness probe (paramiko's keepalive never
    notices a dead peer, and its global requests have no timeout).

Both halves of the Nagle fix are needed on either path (NOTES.md): ``TCP_NODELAY`` on the
client's socket, and a pty session, without which sshd leaves Nagle on for its side and a
small response written in two pieces stalls ~40 ms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import logging
import math
import os
import random
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paramiko
from traitlets import Bool, Enum, Float, Instance, Integer, List, Unicode, default
from traitlets.config import LoggingConfigurable

from .errors import HostKeyMismatchError, SSHError
from .keys import public_key_blob
from .provision.ssh import SSHTarget, resolve_host

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
"""The only address a forward ever listens on."""

_RELAY_CHUNK = 256 * 1024

__all__ = [
    "ChannelRefused",
    "FatalLinkError",
    "Forward",
    "LinkSpec",
    "OpenSSHLink",
    "ParamikoLink",
    "SSHLink",
    "SSHTarget",
    "TunnelManager",
    "TunnelState",
    "bind_loopback",
]


class TunnelState(str, enum.Enum):
    """The state of a forward (``Instance.tunnel.state`` in the REST API)."""

    UP = "up"
    RECONNECTING = "reconnecting"
    DOWN = "down"


class FatalLinkError(SSHError):
    """A connect failure that retrying cannot fix (the key refused, a bad configuration)."""


class ChannelRefused(SSHError):
    """The host answered a channel open but could not connect to the target port."""


class PortTaken(SSHError):
    """Another program took the forward's local port while the link was down."""


@dataclass(frozen=True)
class LinkSpec:
    """Everything a link needs: where to log in, what to forward, and its deadlines."""

    instance_id: str
    target: SSHTarget
    remote_host: str
    remote_port: int
    local_port: int
    ssh_config_file: str | None
    default_user: str
    connect_timeout: float
    probe_interval: float
    probe_timeout: float
    ciphers: tuple[str, ...]
    runtime_dir: str | None = None


class SSHLink(Protocol):
    """One SSH connection carrying a forward: the swappable data path.

    A link either listens on the local port itself (``owns_port``: the OpenSSH client binds
    it) or is handed every connection the forward accepts (:meth:`serve`).
    """

    owns_port: bool

    def serve(self, sock: socket.socket) -> None:
        """Relay an accepted local connection (only when not ``owns_port``)."""

    def probe(self, timeout: float) -> bool:
        """Whether the host answered within ``timeout`` (may block that long)."""

    def wants_probe(self) -> bool:
        """Whether a probe is wanted before the next interval (e.g. to refill a spare)."""

    def is_alive(self) -> bool:
        """Whether the connection is open, as far as is known without a round trip."""

    def fds(self) -> list[int]:
        """Descriptors the supervisor should watch; :meth:`on_readable` is called for them."""

    def on_readable(self) -> None:
        """Consume what the descriptors of :meth:`fds` have to say."""

    def close(self) -> None:
        """Close the connection and all it carries; every thread and process ends first."""


#: ``factory(spec) -> SSHLink``: one verified, authenticated, serving link (or an exception).
LinkFactory = Callable[[LinkSpec], SSHLink]


# -- the OpenSSH client -----------------------------------------------------------------------


def _classify_ssh_failure(stderr: str, returncode: int | None) -> SSHError:
    """The error a failed ``ssh`` stands for, from what it printed."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else f"ssh exited with status {returncode}"
    lower = text.lower()
    if (
        "host key verification failed" in lower
        or "remote host identification has changed" in lower
        or "no matching host key type" in lower
    ):
        return HostKeyMismatchError(
            "The host presented an SSH host key other than the one pinned at launch; "
            "refused before logging in."
        )
    if "permission denied" in lower:
        return FatalLinkError(f"The host refused the key: {last}")
    if "address already in use" in lower or "cannot listen to port" in lower:
        return PortTaken(f"The local port is taken: {last}")
    if "bad configuration" in lower or "unsupported option" in lower:
        return FatalLinkError(f"ssh refused its configuration: {last}")
    return SSHError(f"ssh: {last}")


class OpenSSHLink:
    """The system ``ssh`` client as the data path; it binds ``127.0.0.1:<local_port>``."""

    owns_port = True

    def __init__(self, spec: LinkSpec, process: subprocess.Popen, runtime_dir: Path):
        self.spec = spec
        self.process = process
        self.runtime_dir = runtime_dir
        self.pid_file: Path | None = None
        self.stderr_tail = ""

    @classmethod
    def command(cls, spec: LinkSpec, runtime_dir: Path, ssh: str = "ssh") -> list[str]:
        """The ``ssh`` command line: private files only, the pinned key, a pty session."""
        target = spec.target
        host = resolve_host(
            target.host,
            spec.ssh_config_file,
            port=target.port,
            user=target.user,
            default_user=spec.default_user,
        )
        key_type, _ = public_key_blob(target.host_public_key)
        alias = f"jupyter-ec2-{spec.instance_id}"
        interval = max(1, round(spec.probe_interval))
        count = max(1, math.ceil(spec.probe_timeout / interval))
        options = {
            "BatchMode": "yes",
            "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": str(runtime_dir / "known_hosts"),
            "GlobalKnownHostsFile": os.devnull,
            "HostKeyAlias": alias,
            "HostKeyAlgorithms": key_type,
            "CheckHostIP": "no",
            "UpdateHostKeys": "no",
            "IdentitiesOnly": "yes",
            "IdentityFile": str(runtime_dir / "id_key"),
            "IdentityAgent": "none",
            "PreferredAuthentications": "publickey",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "ExitOnForwardFailure": "yes",
            "ControlMaster": "no",
            "ControlPath": "none",
            "ForwardAgent": "no",
            "ForwardX11": "no",
            "PermitLocalCommand": "no",
            "ConnectTimeout": str(max(1, round(spec.connect_timeout))),
            "ServerAliveInterval": str(interval),
            "ServerAliveCountMax": str(count),
            "TCPKeepAlive": "yes",
            "LogLevel": "ERROR",
            "Ciphers": ",".join(spec.ciphers),
            "User": host.user,
        }
        argv = [ssh, "-F", spec.ssh_config_file or os.devnull, "-e", "none", "-tt"]
        for name, value in options.items():
            argv += ["-o", f"{name}={value}"]
        if target.port is not None:
            argv += ["-p", str(target.port)]
        forward = f"{LOOPBACK}:{spec.local_port}:{spec.remote_host}:{spec.remote_port}"
        # A command on a pty makes sshd turn TCP_NODELAY on for its side; `cat` waits on the
        # pty and ends with the session.
        argv += ["-L", forward, "--", target.host, "exec cat"]
        return argv

    @classmethod
    def connect(cls, spec: LinkSpec) -> OpenSSHLink:
        """Start ``ssh`` and wait until it is logged in and listening (or raise)."""
        ssh = shutil.which("ssh")
        if ssh is None:
            raise FatalLinkError("No OpenSSH client (ssh) is installed.")
        pid_file = _pid_file(spec.runtime_dir, spec.instance_id)
        runtime_dir = Path(tempfile.mkdtemp(prefix="jupyter-ec2-fwd-"))
        try:
            _write_0600(runtime_dir / "id_key", spec.target.client_key.private_openssh)
            known = f"jupyter-ec2-{spec.instance_id} {spec.target.host_public_key.strip()}\n"
            _write_0600(runtime_dir / "known_hosts", known)
            argv = cls.command(spec, runtime_dir, ssh)
            log.debug("forward %s: %s", spec.instance_id, describe_command(argv))
            env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # no terminal signals from the server's session
            )
        except BaseException:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise
        link = cls(spec, process, runtime_dir)
        link.pid_file = pid_file
        if pid_file is not None:
            with contextlib.suppress(OSError):
                pid_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                pid_file.write_text(str(process.pid))
        try:
            link._wait_ready(spec.connect_timeout + 2)
        except BaseException:
            link.close()
            raise
        # Logged in: ssh needs neither file again (a reconnect starts a new ssh), so no copy
        # of the key outlives this moment, even if this server is killed later.
        shutil.rmtree(runtime_dir, ignore_errors=True)
        return link

    def _wait_ready(self, timeout: float) -> None:
        """Wait until ssh listens on the local port (it binds -L ports only once logged in).

        Readiness is read from the port, not from the remote command's output: a login shell
        whose rc files are slow must not delay the forward, and probing the port by binding
        it (rather than connecting) opens no stray connection to the remote server.
        """
        deadline = time.monotonic() + timeout
        while not _port_is_listening(self.spec.local_port):
            if self.process.poll() is not None:
                self._read_stderr()
                raise _classify_ssh_failure(self.stderr_tail, self.process.returncode)
            if time.monotonic() >= deadline:
                self._read_stderr()
                detail = self.stderr_tail.strip().splitlines()[-1:] or ["no answer"]
                raise SSHError(f"ssh did not log in within {timeout:.0f} s ({detail[0]}).")
            self.on_readable()
            time.sleep(0.01)

    def _read_stderr(self) -> None:
        stderr = self.process.stderr
        if stderr is None or stderr.closed:
            return
        while select.select([stderr], [], [], 0)[0]:
            data = os.read(stderr.fileno(), 65536)
            if not data:
                stderr.close()  # at its end: stop watching it
                return
            text = data.decode(errors="replace")
            self.stderr_tail = (self.stderr_tail + text)[-4000:]
            for line in text.splitlines():
                if line.strip():
                    log.info("forward %s: ssh: %s", self.spec.instance_id, line.strip())

    def serve(self, sock: socket.socket) -> None:  # pragma: no cover - ssh listens itself
        """Never called: ``ssh`` accepts its own connections."""
        sock.close()

    def probe(self, timeout: float) -> bool:
        """ssh probes itself (ServerAlive* with a deadline) and exits when the host is dead."""
        return self.is_alive()

    def wants_probe(self) -> bool:
        """Never: ssh probes on its own timer."""
        return False

    def is_alive(self) -> bool:
        """Whether the ssh process still runs."""
        return self.process.poll() is None

    def fds(self) -> list[int]:
        """stdout (the pty: only the marker) and stderr (errors), to keep them drained."""
        return [
            f.fileno() for f in (self.process.stdout, self.process.stderr) if f and not f.closed
        ]

    def on_readable(self) -> None:
        """Drain the pipes so that ssh never blocks on a full one."""
        stdout = self.process.stdout
        if stdout is not None and not stdout.closed:
            with contextlib.suppress(OSError):
                while select.select([stdout], [], [], 0)[0]:
                    if not os.read(stdout.fileno(), 65536):
                        stdout.close()  # the pty session ended; the forward may go on
                        break
        self._read_stderr()

    def close(self) -> None:
        """End ssh (SIGTERM, then SIGKILL), by its PID; close the pipes; remove the key copy."""
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(OSError):
            self._read_stderr()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        pid_file = self.pid_file
        if pid_file is not None:
            with contextlib.suppress(OSError, ValueError):
                if int(pid_file.read_text()) == process.pid:
                    pid_file.unlink()


def _pid_file(runtime_dir: str | None, instance_id: str) -> Path | None:
    if not runtime_dir:
        return None
    return Path(runtime_dir) / f"forward-{instance_id}.pid"


def _end_orphan(pid_file: Path | None, instance_id: str) -> None:
    """End the ssh a previous run of this server left for the instance (it was killed).

    Only the process named in our pid file, and only if its command line is our ssh for this
    instance (its ``HostKeyAlias``): a recycled PID belongs to someone else and is left alone.
    """
    if pid_file is None or not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    marker = f"HostKeyAlias=jupyter-ec2-{instance_id}"
    try:
        command = subprocess.run(
            ["ps", "-ww", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return
    if marker in command and "ssh" in command:
        log.info("forward %s: ending the ssh left by a previous run (pid %d)", instance_id, pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.05)
    with contextlib.suppress(OSError):
        pid_file.unlink()


def _port_is_listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:port (a bind with SO_REUSEADDR then fails).

    SO_REUSEADDR lets the test bind succeed over connections in TIME_WAIT, but never over a
    listening socket, so a failure means someone listens.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((LOOPBACK, port))
    except OSError as error:
        return error.errno == errno.EADDRINUSE
    finally:
        probe.close()
    return False


def _write_0600(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# -- paramiko ---------------------------------------------------------------------------------


class _Relay:
    """One local connection relayed over one channel by two threads (each way one).

    A relay is either made for an accepted socket (its thread opens the channel) or prepared
    ahead as a *spare*: the channel is open and both threads wait for a socket, so a new local
    connection costs no SSH round trip and no thread start.
    """

    def __init__(self, link: ParamikoLink, sock: socket.socket | None = None):
        self.link = link
        self.sock = sock
        self.channel: Any = None
        self.threads: list[threading.Thread] = []
        self._ready = threading.Event()  # the socket and the channel are both there
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start both threads (they wait for the socket and the channel)."""
        name = f"forward-{self.link.spec.instance_id}"
        for run, suffix in ((self._run_down, "down"), (self._run_up, "up")):
            thread = threading.Thread(target=run, name=f"{name}-{suffix}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def open_channel(self, timeout: float, origin: tuple[str, int] = (LOOPBACK, 0)) -> None:
        """Open the channel (raises :class:`ChannelRefused`, or anything when the link fails)."""
        spec = self.link.spec
        try:
            self.channel = self.link.transport.open_channel(
                "direct-tcpip", (spec.remote_host, spec.remote_port), origin, timeout=timeout
            )
        except paramiko.ChannelException as error:
            raise ChannelRefused(f"The host could not connect: {error}") from None

    def attach(self, sock: socket.socket) -> bool:
        """Give a spare its socket; False if it went stale meanwhile (then it is closed)."""
        channel = self.channel
        with self._lock:
            stale = (
                self._closed.is_set() or channel is None or channel.closed or channel.eof_received
            )
            if not stale:
                self.sock = sock
                self._ready.set()
        if stale:
            self.close()
        return not stale

    def _run_down(self) -> None:
        """Open the channel if needed, then relay channel → local socket."""
        try:
            if self.channel is None:
                try:
                    origin = self.sock.getpeername()[:2] if self.sock else (LOOPBACK, 0)
                    self.open_channel(self.link.spec.probe_timeout, origin)
                except Exception as error:  # noqa: BLE001 - refused, timed out, link gone
                    log.debug("channel open failed: %s", error)
                    return
                with self._lock:
                    if self._closed.is_set():
                        return
                    self._ready.set()
            self._ready.wait()
            if not self._closed.is_set():
                self._pump(self.channel.recv, self.sock.sendall, self._eof_to_socket)
        finally:
            self.close()
            self.link._relay_done(self)

    def _run_up(self) -> None:
        """Relay local socket → channel."""
        self._ready.wait()
        if not self._closed.is_set():
            self._pump(self.sock.recv, self.channel.sendall, self.channel.shutdown_write)

    def _eof_to_socket(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def _pump(self, read: Callable, write: Callable, eof: Callable) -> None:
        try:
            while True:
                data = read(_RELAY_CHUNK)
                if not data:
                    eof()
                    return
                write(data)
        except Exception:  # noqa: BLE001 - either side went away
            self._abort()

    def _abort(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread reading the socket
        if self.channel is not None:
            with contextlib.suppress(Exception):
                self.channel.close()

    def close(self) -> None:
        """Stop both directions and release the socket (idempotent, any thread)."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self._ready.set()
        self._abort()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()

    def join(self, timeout: float) -> None:
        """Wait for both threads."""
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


class ParamikoLink:
    """paramiko as the data path: relay threads over one transport, one pty session open."""

    owns_port = False

    def __init__(self, spec: LinkSpec, connection: Any, prepare_channels: bool = True):
        self.spec = spec
        self.connection = connection
        self.transport: paramiko.Transport = connection.transport
        self.prepare_channels = prepare_channels
        self._spare: _Relay | None = None
        self._relays: set[_Relay] = set()
        self._lock = threading.Lock()
        self._refused_until = 0.0
        self._session = self._open_pty()

    @classmethod
    def connect(cls, spec: LinkSpec, prepare_channels: bool = True) -> ParamikoLink:
        """Log in with :func:`jupyter_ec2.provision.ssh.connect` (one attempt)."""
        from .provision.ssh import SSHConnectError, connect

        try:
            connection = connect(
                spec.target,
                ssh_config_file=spec.ssh_config_file,
                default_user=spec.default_user,
                timeout=spec.connect_timeout,
                attempt_timeout=spec.connect_timeout,
                keepalive=0,
            )
        except SSHConnectError as error:
            if error.failure is not None and error.failure.kind == "auth":
                raise FatalLinkError(str(error)) from None
            raise
        try:
            return cls(spec, connection, prepare_channels)
        except BaseException:
            _close_connection(connection)
            raise

    def _open_pty(self) -> paramiko.Channel:
        # A command on a pty makes sshd set TCP_NODELAY on its end; `cat` ends with the session.
        try:
            session = self.transport.open_session(timeout=self.spec.connect_timeout)
            session.get_pty(term="dumb", width=80, height=24)
            session.exec_command("exec cat")
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise SSHError(f"Could not open the pty session: {error}") from None
        return session

    def serve(self, sock: socket.socket) -> None:
        """Relay ``sock``: over the spare channel if one is ready, else over a new one."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        spare, self._spare = self._spare, None
        if spare is not None and spare.attach(sock):
            return
        relay = _Relay(self, sock)
        with self._lock:
            self._relays.add(relay)
        relay.start()

    def probe(self, timeout: float) -> bool:
        """Open the next spare channel within ``timeout`` (a refusal still proves the host)."""
        relay = _Relay(self)
        try:
            relay.open_channel(timeout)
        except ChannelRefused as error:
            log.debug("forward %s: %s", self.spec.instance_id, error)
            self._refused_until = time.monotonic() + self.spec.probe_interval
            return True
        except Exception as error:  # noqa: BLE001 - timed out or the link failed
            log.debug("forward %s: probe failed: %s", self.spec.instance_id, error)
            return False
        if not self.prepare_channels:
            relay.close()
            return True
        with self._lock:
            self._relays.add(relay)
        relay.start()
        old, self._spare = self._spare, relay
        if old is not None:
            old.close()  # its threads end on their own
        return True

    def wants_probe(self) -> bool:
        """A spare was used: prepare the next one now (unless the remote port refuses)."""
        return (
            self.prepare_channels
            and self._spare is None
            and time.monotonic() >= self._refused_until
        )

    def is_alive(self) -> bool:
        """Whether paramiko still considers the transport active."""
        return self.transport.is_active()

    def fds(self) -> list[int]:
        """None: paramiko has its own thread."""
        return []

    def on_readable(self) -> None:  # pragma: no cover - no descriptors
        """Nothing to read."""

    def _relay_done(self, relay: _Relay) -> None:
        with self._lock:
            self._relays.discard(relay)

    def relay_count(self) -> int:
        """Relays alive (the spare included)."""
        with self._lock:
            return len(self._relays)

    def close(self) -> None:
        """Close every relay and the transport; join every thread."""
        self._spare = None
        with self._lock:
            relays = list(self._relays)
        for relay in relays:
            relay.close()
        _close_connection(self.connection)
        for relay in relays:
            relay.join(timeout=5)


def _close_connection(connection: Any) -> None:
    """Close a provision SSHConnection and wait for paramiko's transport thread."""
    transport = connection.client.get_transport()
    with contextlib.suppress(Exception):
        connection.close()
    if transport is not None and transport.ident is not None:
        if transport is not threading.current_thread():
            transport.join(timeout=5)
        with contextlib.suppress(OSError):
            transport.sock.close()


# -- one forward ------------------------------------------------------------------------------


def bind_loopback(port: int | None) -> socket.socket:
    """A listening socket on 127.0.0.1: on ``port`` if given and free, else on a free port."""
    for candidate in ([port] if port else []) + [0]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if os.name == "posix":
            # Rebind a remembered port while old connections sit in TIME_WAIT. (On Windows
            # SO_REUSEADDR would let another process steal the port: never set it there.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, candidate))
        except OSError as error:
            sock.close()
            if candidate and error.errno in (errno.EADDRINUSE, errno.EACCES):
                log.info("Port %d is taken; the forward listens on another port.", candidate)
                continue
            raise
        sock.listen(128)
        return sock
    raise OSError("no free loopback port")  # pragma: no cover - port 0 always binds


class Forward:
    """A self-healing forward from ``127.0.0.1:local_port`` to one instance's Jupyter port."""

    def __init__(
        self,
        manager: TunnelManager,
        instance_id: str,
        target: SSHTarget,
        remote_port: int,
        local_port: int | None,
        remote_host: str,
        ssh_config_file: str | None,
    ):
        self.manager = manager
        self.instance_id = instance_id
        self.target = target
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.ssh_config_file = ssh_config_file
        # Held whenever no link listens on the port itself, so that nobody else takes it.
        self._listener: socket.socket | None = bind_loopback(local_port)
        self.local_port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._state = TunnelState.RECONNECTING
        self._link: SSHLink | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a full pipe already says "wake up"
        self._stop = threading.Event()
        self._reconnect_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._fatal = False
        self.last_error: str | None = None
        self.connects = 0

    # -- public -------------------------------------------------------------------------------

    @property
    def state(self) -> TunnelState:
        """``up``, ``reconnecting`` or ``down``."""
        return self._state

    @property
    def link(self) -> SSHLink | None:
        """The current SSH link (None while reconnecting)."""
        return self._link

    @property
    def local_url(self) -> str:
        """``http://127.0.0.1:<local_port>/``."""
        return f"http://{LOOPBACK}:{self.local_port}/"

    def to_json(self) -> dict:
        """The ``tunnel`` field of an Instance."""
        return {"state": self._state.value, "local_port": self.local_port}

    def wait_for(self, state: TunnelState | str, timeout: float) -> bool:
        """Block until the forward is in ``state``; False on timeout."""
        state = TunnelState(state)
        deadline = time.monotonic() + timeout
        while self._state != state:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def reconnect(self) -> None:
        """Drop the current link (if any) and connect again now, resetting the backoff."""
        if self._stop.is_set():
            return
        self._reconnect_now.set()
        self._wake()

    def close(self) -> None:
        """Stop the forward: every connection, the link and the port; join its threads."""
        self._stop.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self._teardown()

    # -- lifecycle (supervisor thread) --------------------------------------------------------

    def start(self, wait: bool) -> None:
        """Connect (raising on failure when ``wait``), then start the supervisor thread."""
        if wait:
            try:
                self._link = self._connect()
            except BaseException:
                self._teardown(notify=False)
                raise
            self.connects += 1
            self._set_state(TunnelState.UP)
        self._thread = threading.Thread(
            target=self._supervise, name=f"forward-{self.instance_id}", daemon=True
        )
        self._thread.start()

    def _spec(self) -> LinkSpec:
        manager = self.manager
        return LinkSpec(
            instance_id=self.instance_id,
            target=manager.current_target(self.instance_id, self.target),
            remote_host=self.remote_host,
            remote_port=self.remote_port,
            local_port=self.local_port,
            ssh_config_file=self.ssh_config_file,
            default_user=manager.default_user,
            connect_timeout=manager.connect_timeout,
            probe_interval=manager.probe_interval,
            probe_timeout=manager.probe_timeout,
            ciphers=tuple(manager.ciphers),
            runtime_dir=manager.runtime_dir or None,
        )

    def _connect(self) -> SSHLink:
        """One connect attempt; the port is handed to a link that listens itself."""
        manager = self.manager
        if manager.link_owns_port:
            self._release_port()
        try:
            return manager.link_factory(self._spec())
        except BaseException:
            if manager.link_owns_port:
                self._hold_port()
            raise

    def _release_port(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _hold_port(self) -> None:
        if self._listener is None:
            self._listener = bind_loopback(self.local_port)
            self.local_port = self._listener.getsockname()[1]

    def _supervise(self) -> None:
        """Connect, serve, notice the link's death, back off, connect again; until closed."""
        manager = self.manager
        failures = 0
        first_failure: float | None = None
        try:
            while not self._stop.is_set():
                if self._link is None:
                    try:
                        self._link = self._connect()
                    except (FatalLinkError, HostKeyMismatchError) as error:
                        self._fail(error)
                        return
                    except Exception as error:  # noqa: BLE001 - any other failure is retried
                        failures += 1
                        manager._notify_retry(self.instance_id, failures)
                        first_failure = first_failure or time.monotonic()
                        self.last_error = str(error)
                        give_up = manager.give_up_after
                        if give_up and time.monotonic() - first_failure > give_up:
                            self._fail(error)
                            return
                        delay = 0.0 if isinstance(error, PortTaken) else manager.backoff(failures)
                        log.info(
                            "forward %s: connect failed (%s); retry in %.1f s",
                            self.instance_id,
                            error,
                            delay,
                        )
                        self._idle(delay)
                        continue
                    failures, first_failure = 0, None
                    self.connects += 1
                    self.last_error = None
                    self._set_state(TunnelState.UP)
                self._serve_until_dead(self._link)
                self._drop_link()
                if self._stop.is_set():
                    return
                self._set_state(TunnelState.RECONNECTING)
        except Exception as error:  # pragma: no cover - a bug: report it as a failure
            log.exception("forward %s: supervisor failed", self.instance_id)
            self._fail(error)
        finally:
            if self._fatal:
                # Nobody will carry connections any more: free the port and every thread.
                self._teardown()

    def _serve_until_dead(self, link: SSHLink) -> None:
        """Accept (for a link that does not listen itself) and probe until the link dies."""
        manager = self.manager
        next_probe = time.monotonic() + (0.0 if link.wants_probe() else manager.probe_interval)
        while not self._stop.is_set():
            if self._reconnect_now.is_set():
                self._reconnect_now.clear()
                log.info("forward %s: reconnect requested", self.instance_id)
                return
            if not link.is_alive():
                log.info("forward %s: the SSH connection closed", self.instance_id)
                return
            now = time.monotonic()
            if link.wants_probe():
                next_probe = now
            if now >= next_probe:
                if not link.probe(manager.probe_timeout):
                    log.warning(
                        "forward %s: no answer from the host within %.1f s",
                        self.instance_id,
                        manager.probe_timeout,
                    )
                    self.last_error = "The host stopped answering."
                    return
                next_probe = time.monotonic() + manager.probe_interval
                continue
            watched = [self._wake_r, *link.fds()]
            if self._listener is not None and not link.owns_port:
                watched.append(self._listener.fileno())
            # The tick bounds how late a closed connection is noticed.
            timeout = max(0.0, min(next_probe - now, manager.tick))
            readable, _, _ = select.select(watched, [], [], timeout)
            for fd in readable:
                if fd == self._wake_r:
                    self._drain_wake()
                elif self._listener is not None and fd == self._listener.fileno():
                    self._accept(link)
            if any(fd not in (self._wake_r, self._listener_fd()) for fd in readable):
                link.on_readable()

    def _listener_fd(self) -> int:
        return self._listener.fileno() if self._listener is not None else -1

    def _idle(self, delay: float) -> None:
        """Wait ``delay`` seconds while refusing local connections (no link to carry them)."""
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            if self._reconnect_now.is_set():
                self._reconnect_now.clear()
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            watched = [self._wake_r] + ([self._listener] if self._listener is not None else [])
            readable, _, _ = select.select(watched, [], [], left)
            if self._wake_r in readable:
                self._drain_wake()
            if self._listener is not None and self._listener in readable:
                with contextlib.suppress(OSError):
                    self._listener.accept()[0].close()

    def _accept(self, link: SSHLink) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        link.serve(sock)

    def _drop_link(self) -> None:
        """Close the link (everything it carried ends with it) and hold the port again."""
        link, self._link = self._link, None
        if link is not None:
            link.close()
        if not self._stop.is_set():
            with contextlib.suppress(OSError):
                self._hold_port()

    def _fail(self, error: BaseException) -> None:
        self._fatal = True
        self.last_error = str(error)
        log.error("forward %s: giving up: %s", self.instance_id, error)
        self._stop.set()

    def _teardown(self, notify: bool = True) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()
        self._release_port()
        with self._lock:
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        if notify:
            self._set_state(TunnelState.DOWN)
        else:
            self._state = TunnelState.DOWN

    def _set_state(self, state: TunnelState) -> None:
        with self._lock:
            if self._state == state:
                return
            self._state = state
        log.info("forward %s: %s (port %d)", self.instance_id, state.value, self.local_port)
        self.manager._notify(self.instance_id, state)

    def _wake(self) -> None:
        # Under the lock: a closed pipe's fd number may already belong to another file.
        with self._lock, contextlib.suppress(OSError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 512)


# -- the manager ------------------------------------------------------------------------------


class TunnelManager(LoggingConfigurable):
    """Every instance's forward: open, look up, reconnect and close them (synchronous API)."""

    engine = Enum(
        ["auto", "openssh", "paramiko"],
        default_value="auto",
        help="""What carries the forwards. 'openssh': the system ssh client (the fastest: its
        data path is C); 'paramiko': in-process Python; 'auto': openssh on POSIX systems with
        an ssh client installed, paramiko otherwise.""",
    ).tag(config=True)
    probe_interval = Float(
        5.0, help="Seconds between two liveness probes of an SSH connection."
    ).tag(config=True)
    probe_timeout = Float(
        5.0,
        help="""Seconds a liveness probe may take before the connection is considered dead and
        re-established: a dead or frozen host is noticed within about
        probe_interval + probe_timeout seconds.""",
    ).tag(config=True)
    connect_timeout = Float(
        10.0, help="Seconds one SSH connect (TCP, handshake, authentication) may take."
    ).tag(config=True)
    backoff_initial = Float(
        0.5, help="Seconds before the first reconnect attempt; doubled after each failure."
    ).tag(config=True)
    backoff_max = Float(10.0, help="The longest wait between two reconnect attempts.").tag(
        config=True
    )
    give_up_after = Float(
        0.0,
        help="""Stop retrying (state 'down') after this many seconds of failed reconnects;
        0 retries forever.""",
    ).tag(config=True)
    tick = Float(0.25, help="Seconds between two checks that an SSH connection is still open.").tag(
        config=True
    )
    ciphers = List(
        Unicode(),
        default_value=[
            "aes128-gcm@openssh.com",
            "chacha20-poly1305@openssh.com",
            "aes256-gcm@openssh.com",
            "aes128-ctr",
        ],
        help="Ciphers the OpenSSH client offers, in order (AES-GCM uses AES-NI: fastest).",
    ).tag(config=True)
    prepare_channels = Bool(
        True,
        help="""paramiko engine: keep one channel to the remote server open ahead of need, so a
        new local connection costs no SSH round trip (opening it is also the probe).""",
    ).tag(config=True)
    default_user = Unicode(
        "ubuntu", help="The login user when neither the target nor the ssh_config names one."
    ).tag(config=True)
    max_forwards = Integer(256, help="The most forwards one server keeps open at once.").tag(
        config=True
    )
    runtime_dir = Unicode(
        help="""Where the OpenSSH engine keeps one pid file per forward, so that an ssh left
        behind by a killed server is ended when the forward is opened again ('' = none).""",
    ).tag(config=True)

    @default("runtime_dir")
    def _default_runtime_dir(self) -> str:
        from jupyter_core.paths import jupyter_runtime_dir

        return os.path.join(jupyter_runtime_dir(), "jupyter_ec2")

    store = Instance(
        "jupyter_ec2.store.StateStore",
        allow_none=True,
        help="Where host keys are pinned (set by the extension): every (re)connect trusts the "
        "key pinned there now, so a forward follows a host key rotation.",
    )

    def current_target(self, instance_id: str, target: SSHTarget) -> SSHTarget:
        """``target`` with the host key pinned for the instance now (the store's, if any)."""
        # A second forward to the same instance is keyed "<instance id>-<name>" (the Dask
        # dashboard's, jupyter_ec2.workers): it trusts the instance's own pinned key.
        instance_id = instance_id.split("-dask", 1)[0]
        pinned = self.store.pinned_host_key(instance_id) if self.store is not None else None
        if pinned and pinned != " ".join(target.host_public_key.split()[:2]):
            return dataclasses.replace(target, host_public_key=pinned)
        return target

    def __init__(
        self,
        on_change: Callable[[str, TunnelState], None] | None = None,
        link_factory: LinkFactory | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.on_change = on_change
        #: Called (instance_id, failures) from the forward's thread after a failed reconnect,
        #: so the owner can refresh what may have caused it (the SSH rule of a moved address).
        self.on_retry: Callable[[str, int], None] | None = None
        self._custom_factory = link_factory
        self._forwards: dict[str, Forward] = {}
        self._lock = threading.Lock()

    @property
    def engine_in_use(self) -> str:
        """``openssh`` or ``paramiko``: what ``engine`` resolves to on this machine."""
        if self.engine == "auto":
            # The OpenSSH link watches its pipes with select(): POSIX only.
            usable = os.name == "posix" and shutil.which("ssh") is not None
            return "openssh" if usable else "paramiko"
        return self.engine

    @property
    def link_factory(self) -> LinkFactory:
        """The factory of links for the engine in use."""
        if self._custom_factory is not None:
            return self._custom_factory
        if self.engine_in_use == "openssh":
            return OpenSSHLink.connect
        return lambda spec: ParamikoLink.connect(spec, self.prepare_channels)

    @property
    def link_owns_port(self) -> bool:
        """Whether links bind the local port themselves."""
        if self._custom_factory is not None:
            return bool(getattr(self._custom_factory, "owns_port", False))
        return self.engine_in_use == "openssh"

    def backoff(self, failures: int) -> float:
        """The wait before attempt ``failures + 1``: exponential, capped, with jitter."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** max(0, failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    def open(
        self,
        instance_id: str,
        target: SSHTarget,
        remote_port: int,
        local_port: int | None = None,
        *,
        remote_host: str = LOOPBACK,
        ssh_config_file: str | os.PathLike | None = None,
        wait: bool = True,
    ) -> Forward:
        """Open (or replace) the forward of ``instance_id`` to ``remote_host:remote_port``.

        ``local_port`` is used when free (a remembered port), otherwise a free port is chosen.
        With ``wait`` the first connection is made before returning and its failure raises
        (:class:`~jupyter_ec2.errors.HostKeyMismatchError`, :class:`~jupyter_ec2.errors.SSHError`)
        leaving nothing open; without, the forward starts in ``reconnecting``.
        """
        old = self.get(instance_id)
        if old is not None:
            if local_port is None:
                local_port = old.local_port
            self.close(instance_id)
        with self._lock:
            if len(self._forwards) >= self.max_forwards:
                raise SSHError("Too many open forwards.")
        # An ssh left by a killed server still holds the remembered port: end it first.
        _end_orphan(_pid_file(self.runtime_dir or None, instance_id), instance_id)
        config = os.fspath(ssh_config_file) if ssh_config_file else None
        forward = Forward(self, instance_id, target, remote_port, local_port, remote_host, config)
        forward.start(wait)
        with self._lock:
            self._forwards[instance_id] = forward
        return forward

    def get(self, instance_id: str) -> Forward | None:
        """The forward of ``instance_id``, or None."""
        with self._lock:
            return self._forwards.get(instance_id)

    def state(self, instance_id: str) -> TunnelState:
        """The state of the instance's forward (``down`` when there is none)."""
        forward = self.get(instance_id)
        return forward.state if forward is not None else TunnelState.DOWN

    def reconnect(self, instance_id: str) -> None:
        """Re-establish the instance's connection now (no-op without a forward)."""
        forward = self.get(instance_id)
        if forward is not None:
            forward.reconnect()

    def close(self, instance_id: str) -> None:
        """Close the instance's forward, if any (its threads and sockets end before returning)."""
        with self._lock:
            forward = self._forwards.pop(instance_id, None)
        if forward is not None:
            forward.close()

    def close_all(self) -> None:
        """Close every forward (for the extension's ``stop_extension``)."""
        with self._lock:
            forwards, self._forwards = list(self._forwards.values()), {}
        for forward in forwards:
            forward.close()

    def _notify_retry(self, instance_id: str, failures: int) -> None:
        callback = self.on_retry
        if callback is None:
            return
        try:
            callback(instance_id, failures)
        except Exception:
            self.log.exception("on_retry callback failed for %s", instance_id)

    def _notify(self, instance_id: str, state: TunnelState) -> None:
        callback = self.on_change
        if callback is None:
            return
        try:
            callback(instance_id, state)
        except Exception:
            self.log.exception("on_change callback failed for %s", instance_id)


def describe_command(argv: list[str]) -> str:
    """A command line as a shell would show it (for logs and docs)."""
    return " ".join(shlex.quote(a) for a in argv)
