"""The port forward: a loopback-only listener per instance, carried over SSH, that heals itself.

One :class:`Forward` per instance holds:

- a listening socket bound to ``127.0.0.1`` only, on a port that stays the same across
  reconnects (it is never closed while the forward lives) and that a caller may ask for, e.g.
  the port remembered from a previous run;
- one SSH link (:class:`SSHLink`): by default a paramiko transport whose socket is opened here
  with ``TCP_NODELAY``, with its pinned host key checked on every (re)connect, and with one pty
  session kept open (sshd turns ``TCP_NODELAY`` on for its side only once a pty runs a command;
  without both halves a small response written in two pieces stalls ~40 ms on Nagle plus
  delayed ACK). Every accepted local connection becomes a ``direct-tcpip`` channel to the
  remote Jupyter port;
- a supervisor thread that accepts connections, probes the link with its own deadline (a
  ``direct-tcpip`` open to the remote port: paramiko's keepalive never notices a dead peer and
  its global requests have no timeout), and reconnects with exponential backoff and jitter.

The state is ``up``, ``reconnecting`` or ``down``; every change is reported to
``on_change(instance_id, state)``. The API is synchronous: the manager calls it from worker
threads. The data path sits behind :class:`SSHLink`/:data:`LinkFactory`, so another SSH
implementation can carry the same forward (``bench/bench_forward.py`` measures them).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import errno
import logging
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import paramiko
from traitlets import Bool, Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from .errors import HostKeyMismatchError, SSHError
from .keys import pkey_from_text

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
"""The only address a forward ever listens on."""

#: Ciphers offered first: AES-GCM needs no separate MAC pass and uses AES-NI through OpenSSL,
#: which nearly doubles paramiko's throughput against its default (aes128-ctr + hmac-sha2).
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

_RELAY_CHUNK = 256 * 1024


class TunnelState(str, enum.Enum):
    """The state of a forward (``Instance.tunnel.state`` in the REST API)."""

    UP = "up"
    RECONNECTING = "reconnecting"
    DOWN = "down"


@dataclass(frozen=True)
class SSHTarget:
    """Where an instance's sshd is and how to log in: address, user, key and pinned host key."""

    host: str
    username: str
    private_key: str | paramiko.PKey = field(repr=False)
    host_key: str
    port: int = 22
    ssh_config_file: str | None = None

    def pkey(self) -> paramiko.PKey:
        """The login key as a paramiko key."""
        if isinstance(self.private_key, paramiko.PKey):
            return self.private_key
        return pkey_from_text(self.private_key)


class SSHLink(Protocol):
    """One authenticated SSH connection that carries a forward (the swappable data path)."""

    def open_stream(self, host: str, port: int, origin: tuple[str, int], timeout: float) -> Any:
        """A ``direct-tcpip`` channel to ``host:port`` on the far side, opened within
        ``timeout``: a socket-like object (``recv``, ``sendall``, ``shutdown_write``, ``close``,
        ``closed``/``eof_received``). Raises :class:`ChannelRefused` when the far side answered
        but could not connect, anything else when the link failed or did not answer in time."""

    def is_alive(self) -> bool:
        """Whether the connection is still open, as far as is known without a round trip."""

    def close(self) -> None:
        """Close the connection and everything it carries; wait for its threads to end."""


#: ``factory(target, timeout) -> SSHLink``: makes one verified, authenticated link.
LinkFactory = Callable[[SSHTarget, float], SSHLink]


class FatalLinkError(SSHError):
    """A connect failure that retrying cannot fix (host key mismatch, key refused)."""


class ChannelRefused(SSHError):
    """The host answered a channel open but could not connect to the target port."""


# -- the paramiko data path --------------------------------------------------------------------


def resolve_target(target: SSHTarget) -> tuple[str, int, str]:
    """Apply an OpenSSH-style config file to the target: (address, port, user).

    Only ``HostName``, ``Port`` and ``User`` are honoured; a ``ProxyJump``/``ProxyCommand``
    entry is refused rather than silently bypassed.
    """
    host, port, user = target.host, target.port, target.username
    if target.ssh_config_file:
        try:
            config = paramiko.SSHConfig.from_path(target.ssh_config_file)
        except OSError as error:
            raise SSHError(f"Cannot read the ssh_config file: {error.strerror}.") from None
        entry = config.lookup(target.host)
        if "proxyjump" in entry or "proxycommand" in entry:
            raise FatalLinkError("ProxyJump/ProxyCommand are not supported by the forward.")
        host = entry.get("hostname", host)
        port = int(entry.get("port", port))
        user = entry.get("user", user)
    return host, port, user


def open_tcp_nodelay(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection with ``TCP_NODELAY`` set (paramiko never sets it on its own socket)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        raise SSHError(f"Cannot reach the SSH port: {error.strerror or error}.") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock


def _key_blob(public_line: str) -> tuple[str, bytes]:
    parts = public_line.split()
    if len(parts) < 2:
        raise FatalLinkError("The pinned host key is not an OpenSSH public key line.")
    return parts[0], base64.b64decode(parts[1])


def connect_transport(
    target: SSHTarget, timeout: float, ciphers: tuple[str, ...] = FAST_CIPHERS
) -> paramiko.Transport:
    """Connect, check the pinned host key, authenticate: a ready paramiko transport.

    The host must present exactly the pinned key (only its key type is offered), or
    :class:`~jupyter_ec2.errors.HostKeyMismatchError` is raised before any authentication.
    """
    host, port, user = resolve_target(target)
    key_type, key_blob = _key_blob(target.host_key)
    sock = open_tcp_nodelay(host, port, timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        transport.auth_timeout = timeout
        options = transport.get_security_options()
        options.key_types = (key_type,)
        preferred = [c for c in ciphers if c in options.ciphers]
        options.ciphers = tuple(preferred + [c for c in options.ciphers if c not in preferred])
        transport.set_keepalive(0)
        try:
            transport.start_client(timeout=timeout)
        except paramiko.SSHException as error:
            raise SSHError(f"SSH handshake failed: {error}") from None
        presented = transport.get_remote_server_key()
        if presented.get_name() != key_type or presented.asbytes() != key_blob:
            raise HostKeyMismatchError(
                "The host presented a different SSH host key than the one pinned at launch."
            )
        try:
            transport.auth_publickey(user, target.pkey())
        except paramiko.AuthenticationException:
            raise FatalLinkError(f"The host refused the key for user {user!r}.") from None
        except paramiko.SSHException as error:
            raise SSHError(f"SSH authentication failed: {error}") from None
        return transport
    except BaseException:
        _close_transport(transport)
        raise


def _close_transport(transport: paramiko.Transport) -> None:
    """Close a transport and wait for its thread, so that no thread outlives it."""
    with contextlib.suppress(Exception):
        transport.close()
    if transport.ident is not None and transport is not threading.current_thread():
        transport.join(timeout=5)
    with contextlib.suppress(OSError):
        transport.sock.close()


class ParamikoLink:
    """The default data path: a paramiko transport plus one pty session kept open."""

    def __init__(self, transport: paramiko.Transport, pty_command: str | None = "cat"):
        self.transport = transport
        self._session: paramiko.Channel | None = None
        if pty_command:
            self._open_pty(pty_command)

    @classmethod
    def connect(
        cls, target: SSHTarget, timeout: float, pty_command: str | None = "cat"
    ) -> ParamikoLink:
        """Connect to ``target`` (see :func:`connect_transport`) and open the pty session."""
        transport = connect_transport(target, timeout)
        try:
            return cls(transport, pty_command)
        except BaseException:
            _close_transport(transport)
            raise

    def _open_pty(self, command: str) -> None:
        # A command on a pty makes sshd set TCP_NODELAY on its end of the connection; `cat`
        # waits on the pty and ends with the session. Its output (none) is never read.
        try:
            session = self.transport.open_session(timeout=10)
            session.get_pty(term="dumb", width=80, height=24)
            session.exec_command(command)
        except paramiko.SSHException as error:
            raise SSHError(f"Could not open the pty session: {error}") from None
        self._session = session

    def open_stream(
        self, host: str, port: int, origin: tuple[str, int], timeout: float
    ) -> paramiko.Channel:
        """A ``direct-tcpip`` channel (see :meth:`SSHLink.open_stream`)."""
        try:
            return self.transport.open_channel(
                "direct-tcpip", (host, port), origin, timeout=timeout
            )
        except paramiko.ChannelException as error:
            raise ChannelRefused(f"The host could not connect to port {port}: {error}") from None

    def is_alive(self) -> bool:
        """Whether paramiko still considers the transport active."""
        return self.transport.is_active()

    def close(self) -> None:
        """Close the transport (closing every channel) and join paramiko's thread."""
        _close_transport(self.transport)


def paramiko_link(target: SSHTarget, timeout: float) -> SSHLink:
    """The default :data:`LinkFactory`."""
    return ParamikoLink.connect(target, timeout)


# -- relaying one local connection ------------------------------------------------------------


class _Connection:
    """One local connection relayed over one channel by two threads (socket→channel and back).

    A connection is either made for an accepted socket (its channel is opened by its own thread)
    or prepared ahead as a *spare*: the channel is already open and both threads wait for a
    socket, so a new local connection costs no SSH round trip and no thread start.
    """

    def __init__(self, forward: Forward, link: SSHLink, sock: socket.socket | None = None):
        self.forward = forward
        self.link = link
        self.sock = sock
        self.channel: Any = None
        self.created = time.monotonic()
        self.threads: list[threading.Thread] = []
        self._ready = threading.Event()  # the socket and the channel are both there
        self._closed = threading.Event()
        self._lock = threading.Lock()

    # -- setup --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start both threads (they wait for the socket and the channel)."""
        name = f"forward-{self.forward.instance_id}"
        for target, suffix in ((self._run_down, "down"), (self._run_up, "up")):
            thread = threading.Thread(target=target, name=f"{name}-{suffix}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def open_channel(self, timeout: float, origin: tuple[str, int] = (LOOPBACK, 0)) -> None:
        """Open the channel (raises what :meth:`SSHLink.open_stream` raises)."""
        forward = self.forward
        self.channel = self.link.open_stream(
            forward.remote_host, forward.remote_port, origin, timeout
        )

    def attach(self, sock: socket.socket) -> bool:
        """Give a spare its local socket; False if the spare went stale (then it is closed)."""
        channel = self.channel
        with self._lock:
            if self._closed.is_set() or channel is None or channel.closed or channel.eof_received:
                stale = True
            else:
                self.sock = sock
                self._ready.set()
                stale = False
        if stale:
            self.close()
        return not stale

    # -- the two directions -------------------------------------------------------------------

    def _run_down(self) -> None:
        """Open the channel if needed, then relay channel → local socket."""
        forward = self.forward
        try:
            if self.channel is None:
                try:
                    origin = self.sock.getpeername()[:2] if self.sock else (LOOPBACK, 0)
                    self.open_channel(forward.open_timeout, origin)
                except Exception as error:  # noqa: BLE001 - refused, timed out, or link gone
                    log.debug("forward %s: channel open failed: %s", forward.instance_id, error)
                    return
                with self._lock:
                    if self._closed.is_set():
                        return
                    self._ready.set()
            self._ready.wait()
            if self._closed.is_set():
                return
            self._pump(self.channel.recv, self.sock.sendall, self._eof_to_socket)
        finally:
            self.close()
            forward._connection_done(self)

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

    # -- teardown -----------------------------------------------------------------------------

    def _abort(self) -> None:
        """Stop both directions: wake the socket reader and close the channel."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        if self.channel is not None:
            with contextlib.suppress(Exception):
                self.channel.close()

    def close(self) -> None:
        """Abort both directions and release the socket (idempotent, any thread)."""
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
        """Wait for both threads to end."""
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


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
        local_port: int | None = None,
        remote_host: str = LOOPBACK,
    ):
        self.manager = manager
        self.instance_id = instance_id
        self.target = target
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.open_timeout = manager.probe_timeout
        self._listener = bind_loopback(local_port)
        self.local_port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._state = TunnelState.RECONNECTING
        self._link: SSHLink | None = None
        self._spare: _Connection | None = None
        self._connections: set[_Connection] = set()
        self._wake_r, self._wake_w = os.pipe()
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
        """Stop the forward: close the listener, every connection and the link; join threads."""
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

    def _connect(self) -> SSHLink:
        return self.manager.link_factory(self.target, self.manager.connect_timeout)

    def _supervise(self) -> None:
        """Connect, serve, notice the death of the link, back off, connect again; until closed."""
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
                        first_failure = first_failure or time.monotonic()
                        self.last_error = str(error)
                        give_up = manager.give_up_after
                        if give_up and time.monotonic() - first_failure > give_up:
                            self._fail(error)
                            return
                        delay = manager.backoff(failures)
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
                self._serve_until_dead()
                if self._stop.is_set():
                    return
                self._drop_link()
                self._set_state(TunnelState.RECONNECTING)
        except Exception as error:  # pragma: no cover - a bug: report it as a failure
            log.exception("forward %s: supervisor failed", self.instance_id)
            self._fail(error)
        finally:
            if self._fatal:
                # Nobody will carry connections any more: free the port and every thread.
                self._teardown()

    def _serve_until_dead(self) -> None:
        """Accept connections and probe the link until it dies or a reconnect is asked.

        The probe is the opening of the next spare channel, with the probe deadline: it proves
        the host answers and keeps one channel ready for the next local connection.
        """
        manager = self.manager
        next_probe = time.monotonic()
        refused_until = 0.0
        while not self._stop.is_set():
            if self._reconnect_now.is_set():
                self._reconnect_now.clear()
                log.info("forward %s: reconnect requested", self.instance_id)
                return
            link = self._link
            if link is None or not link.is_alive():
                log.info("forward %s: the SSH connection closed", self.instance_id)
                return
            now = time.monotonic()
            if self._spare is None and manager.prepare_channels and now >= refused_until:
                next_probe = now  # a spare was used: prepare the next one now
            if now >= next_probe:
                answered, refused = self._probe(link)
                if not answered:
                    log.warning(
                        "forward %s: no answer from the host within %.1f s",
                        self.instance_id,
                        manager.probe_timeout,
                    )
                    self.last_error = "The host stopped answering."
                    return
                now = time.monotonic()
                if refused:
                    refused_until = now + manager.probe_interval
                next_probe = now + manager.probe_interval
                continue
            # The tick bounds how late a closed transport is noticed.
            timeout = max(0.0, min(next_probe - now, manager.tick))
            readable, _, _ = select.select([self._listener, self._wake_r], [], [], timeout)
            if self._wake_r in readable:
                self._drain_wake()
            if self._listener in readable:
                self._accept(link)

    def _probe(self, link: SSHLink) -> tuple[bool, bool]:
        """Open a channel within the probe deadline: (the host answered, it refused)."""
        spare = _Connection(self, link)
        try:
            spare.open_channel(self.manager.probe_timeout)
        except ChannelRefused as error:
            # The link is alive; the remote server is not listening (yet).
            log.debug("forward %s: %s", self.instance_id, error)
            return True, True
        except Exception as error:  # noqa: BLE001 - timed out or the link failed
            log.debug("forward %s: probe failed: %s", self.instance_id, error)
            return False, False
        if not self.manager.prepare_channels:
            spare.close()
            return True, False
        old, self._spare = self._spare, spare
        with self._lock:
            self._connections.add(spare)
        spare.start()
        if old is not None:
            old.close()  # its threads end on their own
        return True, False

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
            readable, _, _ = select.select([self._listener, self._wake_r], [], [], left)
            if self._wake_r in readable:
                self._drain_wake()
            if self._listener in readable:
                self._refuse()

    def _accept(self, link: SSHLink) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        spare, self._spare = self._spare, None
        if spare is not None and spare.attach(sock):
            return
        connection = _Connection(self, link, sock)
        with self._lock:
            self._connections.add(connection)
        connection.start()

    def _refuse(self) -> None:
        with contextlib.suppress(OSError):
            sock, _ = self._listener.accept()
            sock.close()

    def _connection_done(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _drop_link(self) -> None:
        """Close the link and every connection it carried; join their threads."""
        link, self._link = self._link, None
        self._spare = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()
        if link is not None:
            link.close()
        for connection in connections:
            connection.join(timeout=5)

    def _fail(self, error: BaseException) -> None:
        self._fatal = True
        self.last_error = str(error)
        log.error("forward %s: giving up: %s", self.instance_id, error)
        self._stop.set()

    def _teardown(self, notify: bool = True) -> None:
        self._drop_link()
        with contextlib.suppress(OSError):
            self._listener.close()
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
        log.info("forward %s: %s", self.instance_id, state.value)
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

    probe_interval = Float(
        5.0, help="Seconds between two liveness probes of an SSH connection."
    ).tag(config=True)
    probe_timeout = Float(
        5.0,
        help="""Seconds a liveness probe (or a channel open) may take before the connection is
        considered dead and re-established. A dead host is noticed within
        probe_interval + probe_timeout.""",
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
    preferred_ciphers = List(
        Unicode(),
        default_value=list(FAST_CIPHERS),
        help="SSH ciphers the forward offers first (the rest of paramiko's list follows).",
    ).tag(config=True)
    prepare_channels = Bool(
        True,
        help="""Keep one channel to the remote server open ahead of need, so that a new local
        connection costs no SSH round trip. Opening it is also the liveness probe.""",
    ).tag(config=True)
    max_forwards = Integer(256, help="The most forwards one server keeps open at once.").tag(
        config=True
    )

    def __init__(
        self,
        on_change: Callable[[str, TunnelState], None] | None = None,
        link_factory: LinkFactory | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.on_change = on_change
        self.link_factory: LinkFactory = link_factory or self._paramiko_link
        self._forwards: dict[str, Forward] = {}
        self._lock = threading.Lock()

    def _paramiko_link(self, target: SSHTarget, timeout: float) -> SSHLink:
        transport = connect_transport(target, timeout, tuple(self.preferred_ciphers))
        try:
            return ParamikoLink(transport)
        except BaseException:
            _close_transport(transport)
            raise

    def backoff(self, failures: int) -> float:
        """The wait before attempt ``failures + 1``: exponential, capped, with full jitter."""
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
        wait: bool = True,
    ) -> Forward:
        """Open (or replace) the forward of ``instance_id``.

        With ``wait`` the first connection is made before returning and its failure raises
        (:class:`~jupyter_ec2.errors.HostKeyMismatchError`, :class:`~jupyter_ec2.errors.SSHError`)
        leaving nothing open; without, the forward starts in ``reconnecting``. ``local_port``
        is used when free (a remembered port); otherwise a free port is chosen.
        """
        old = self.get(instance_id)
        if old is not None:
            if local_port is None:
                local_port = old.local_port
            self.close(instance_id)
        with self._lock:
            if len(self._forwards) >= self.max_forwards:
                raise SSHError("Too many open forwards.")
        forward = Forward(self, instance_id, target, remote_port, local_port, remote_host)
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

    def _notify(self, instance_id: str, state: TunnelState) -> None:
        callback = self.on_change
        if callback is None:
            return
        try:
            callback(instance_id, state)
        except Exception:
            self.log.exception("on_change callback failed for %s", instance_id)
