"""SSH to an instance: pinned host keys, ssh_config, ProxyJump, retries and a diagnosis.

:func:`connect` logs in with the instance's managed key and trusts exactly one host key, the one
pinned at launch (handed to the instance in its user-data). The client offers the server only
that key's algorithm and holds the pinned key as the only known host key with paramiko's
``RejectPolicy``, so any other key ends the connection after the key exchange and *before*
authentication: nothing is sent to a host that cannot prove it is the instance.

Host names go through an OpenSSH-style ``ssh_config`` file when one is configured (``HostName``,
``Port``, ``User``, ``IdentityFile``, ``ProxyJump``, ``UserKnownHostsFile`` for jump hosts),
read afresh at each attempt. The socket is opened here with ``TCP_NODELAY`` (NOTES.md: paramiko
does not set it and small writes then stall). While an instance boots, attempts repeat with
backoff until a deadline; then the error explains in plain words what is most likely wrong,
from the failure seen and the facts the caller knows (:class:`ConnectFacts`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paramiko

from ..errors import HostKeyMismatchError, SSHError, ValidationError
from ..keys import KeyMaterial, public_key_blob

log = logging.getLogger(__name__)


# -- what the caller passes in ------------------------------------------------------------------


@dataclass(frozen=True)
class SSHTarget:
    """Where to connect and whom to trust.

    ``host`` is the instance's address (or a ``Host`` alias of the ssh_config file);
    ``host_public_key`` the pinned public host key line (``ssh-ed25519 AAAA…``);
    ``client_key`` the managed key pair that logs in. ``port`` and ``user`` override the
    ssh_config file when given. ``jump_host_keys`` pins ProxyJump hosts (by alias or host name)
    that are not in a known_hosts file.
    """

    host: str
    host_public_key: str
    client_key: KeyMaterial = field(repr=False)
    port: int | None = None
    user: str | None = None
    jump_host_keys: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectFacts:
    """What the caller knows about the instance, to explain a connection that never came up.

    Every field is optional: None means "unknown". ``allowed_cidrs`` are the sources the
    security group admits on tcp/22; ``caller_address`` is this machine's public address.
    """

    instance_state: str | None = None
    public_address: str | None = None
    private_address: str | None = None
    caller_address: str | None = None
    allowed_cidrs: tuple[str, ...] | None = None
    security_group: str | None = None


@dataclass(frozen=True)
class ConnectFailure:
    """The last failed attempt: ``kind`` is one of refused, timeout, unreachable, dns,
    reset, protocol, auth, jump."""

    kind: str
    detail: str
    host: str
    address: str
    port: int
    user: str
    via: tuple[str, ...] = ()
    attempts: int = 1
    elapsed: float = 0.0


class SSHConnectError(SSHError):
    """No SSH session could be opened before the deadline; the message says why in plain words."""

    #: The lifecycle step this error belongs to (as :class:`ProvisionError` has one).
    step = "connect"

    def __init__(self, message: str, failure: ConnectFailure | None = None):
        super().__init__(message)
        self.failure = failure


# -- ssh_config -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostSpec:
    """A host as the ssh_config file resolves it."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    proxy_jump: tuple[str, ...] = ()
    known_hosts_files: tuple[str, ...] = ()


_HOP = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\s]+))(?::(?P<port>\d+))?$"
)


def _load_config(ssh_config_file: str | os.PathLike | None) -> paramiko.SSHConfig | None:
    if not ssh_config_file:
        return None
    try:
        return paramiko.SSHConfig.from_path(str(ssh_config_file))
    except FileNotFoundError:
        raise SSHError("The configured ssh_config_file does not exist.") from None


def parse_hop(text: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (``[v6]:port`` too) → (user, host, port)."""
    match = _HOP.match(text.strip())
    if not match:
        raise ValidationError("ssh_config_file", f"ProxyJump entry {text!r:.60} is not understood.")
    port = int(match["port"]) if match["port"] else None
    return match["user"], match["v6"] or match["host"], port


def resolve_host(
    alias: str,
    ssh_config_file: str | os.PathLike | None = None,
    *,
    port: int | None = None,
    user: str | None = None,
    default_user: str = "ubuntu",
) -> HostSpec:
    """Resolve ``alias`` through the ssh_config file (if any); explicit values win."""
    config = _load_config(ssh_config_file)
    entry: dict[str, Any] = dict(config.lookup(alias)) if config is not None else {}
    hostname = entry.get("hostname") or alias
    if port is None:
        port = int(entry.get("port", 22))
    user = user or entry.get("user") or default_user
    identity = tuple(os.path.expanduser(p) for p in entry.get("identityfile", []))
    jump_text = entry.get("proxyjump", "") or ""
    hops = (
        ()
        if jump_text.lower() in ("", "none")
        else tuple(h.strip() for h in jump_text.split(",") if h.strip())
    )
    known = entry.get("userknownhostsfile", "")
    known_files = (
        tuple(os.path.expanduser(p) for p in known.split())
        if known
        else (os.path.expanduser("~/.ssh/known_hosts"),)
    )
    return HostSpec(alias, hostname, port, user, identity, hops, known_files)


# -- host keys ------------------------------------------------------------------------------------

_RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256")


def public_key(line: str) -> paramiko.PKey:
    """A public key line (``type base64 [comment]``) as a paramiko key."""
    key_type, blob = public_key_blob(line)
    try:
        return paramiko.PKey.from_type_string(key_type, blob)
    except Exception:
        raise ValidationError(
            "host_public_key", "The pinned host key is not a usable public key."
        ) from None


def disabled_host_key_algorithms(key_type: str) -> list[str]:
    """Every host key algorithm paramiko knows except those of ``key_type``.

    Passed as ``disabled_algorithms={"keys": …}`` so the server must answer with the pinned
    key's type (a server with several host keys would otherwise pick its favourite).
    """
    known = set(getattr(paramiko.Transport, "_preferred_keys", ()))
    known |= set(getattr(paramiko.Transport, "_key_info", {}).keys())
    known |= {"ssh-rsa", "ssh-dss", "ssh-ed25519", *_RSA_ALGORITHMS}
    allowed = set(_RSA_ALGORITHMS) | {"ssh-rsa"} if key_type == "ssh-rsa" else {key_type}
    return sorted(a for a in known if a not in allowed)


def _pinned_client(key: paramiko.PKey, hostname: str, port: int) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    for name in {hostname, f"[{hostname}]:{port}"}:
        client.get_host_keys().add(name, key.get_name(), key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def _known_host_key(spec: HostSpec, pins: Mapping[str, str]) -> paramiko.PKey | None:
    for name in (spec.alias, spec.hostname, f"[{spec.hostname}]:{spec.port}"):
        if name in pins:
            return public_key(pins[name])
    for path in spec.known_hosts_files:
        if not os.path.isfile(path):
            continue
        try:
            keys = paramiko.HostKeys(path)
        except (OSError, paramiko.SSHException):
            continue
        for name in (spec.hostname, f"[{spec.hostname}]:{spec.port}", spec.alias):
            found = keys.lookup(name)
            if found:
                return next(iter(found.values()))
    return None


# -- the connection -------------------------------------------------------------------------------


@dataclass
class CommandResult:
    """What a remote command returned."""

    exit_status: int
    lines: list[str]


class SSHConnection:
    """An authenticated SSH session (and the jump hosts it goes through); close it when done."""

    def __init__(self, client: paramiko.SSHClient, spec: HostSpec, hops: list[paramiko.SSHClient]):
        self.client = client
        self.spec = spec
        self.user = spec.user
        self._hops = hops

    @property
    def transport(self) -> paramiko.Transport:
        """The live transport (for channels and port forwards)."""
        transport = self.client.get_transport()
        if transport is None:
            raise SSHError("The SSH connection is closed.")
        return transport

    def open_sftp(self) -> paramiko.SFTPClient:
        """An SFTP session on this connection."""
        return self.client.open_sftp()

    def run(
        self,
        command: str,
        *,
        on_line: Callable[[str], str | None] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run ``command`` (stdout and stderr merged), calling ``on_line`` for each line.

        A string ``on_line`` returns is written to the command's stdin (an answer to a line).

        ``command`` is a shell command line for the login shell: build it only from constants
        and :func:`shlex.quote`-d values.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            channel = self.transport.open_session()
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise SSHError(f"Could not open an SSH session channel: {err}") from None
        lines: list[str] = []
        pending = b""

        def emit(raw: bytes) -> None:
            text = raw.decode("utf-8", "replace").rstrip("\r")
            lines.append(text)
            if on_line is not None:
                reply = on_line(text)
                if isinstance(reply, str):
                    channel.sendall(reply.encode())  # the command's stdin

        try:
            channel.set_combine_stderr(True)
            channel.settimeout(0.5)
            channel.exec_command(command)
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    raise SSHError(f"The remote command did not finish within {timeout:.0f} s.")
                try:
                    data = channel.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                pending += data
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    emit(raw)
            if pending:
                emit(pending)
            while not channel.exit_status_ready():
                if not self.transport.is_active():
                    raise SSHError("The SSH connection dropped while a command ran.")
                if deadline is not None and time.monotonic() > deadline:
                    raise SSHError(f"The remote command did not finish within {timeout:.0f} s.")
                time.sleep(0.02)
            return CommandResult(channel.recv_exit_status(), lines)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise SSHError(f"The SSH session failed while a command ran: {err}") from None
        finally:
            channel.close()

    def close(self) -> None:
        """Close the session and every jump host."""
        self.client.close()
        for hop in reversed(self._hops):
            hop.close()
        self._hops = []

    def __enter__(self) -> SSHConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AttemptFailed(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _classify_socket_error(err: BaseException) -> _AttemptFailed:
    if isinstance(err, ConnectionRefusedError):
        return _AttemptFailed("refused", "connection refused")
    if isinstance(err, (TimeoutError, socket.timeout)):
        return _AttemptFailed("timeout", "no answer")
    if isinstance(err, socket.gaierror):
        return _AttemptFailed("dns", f"the name does not resolve ({err.strerror or err})")
    if isinstance(err, ConnectionResetError):
        return _AttemptFailed("reset", "the connection was reset")
    if isinstance(err, OSError):
        return _AttemptFailed("unreachable", err.strerror or str(err))
    return _AttemptFailed("protocol", str(err) or type(err).__name__)


def _open_socket(hostname: str, port: int, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((hostname, port), timeout=timeout)
    except OSError as err:
        raise _classify_socket_error(err) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _login(
    key: paramiko.PKey,
    spec: HostSpec,
    sock: Any,
    client_key: KeyMaterial,
    timeout: float,
    what: str,
) -> paramiko.SSHClient:
    """Key exchange with the pinned key (checked before auth), then public-key auth."""
    client = _pinned_client(key, spec.hostname, spec.port)
    try:
        client.connect(
            spec.hostname,
            spec.port,
            username=spec.user,
            pkey=client_key.pkey(),
            key_filename=[p for p in spec.identity_files if os.path.isfile(p)] or None,
            sock=sock,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
            disabled_algorithms={"keys": disabled_host_key_algorithms(key.get_name())},
        )
    except paramiko.BadHostKeyException as err:
        client.close()
        raise HostKeyMismatchError(
            f"{what} answered with a host key other than the pinned one "
            f"({err.key.get_name()} {err.key.fingerprint}); refused before logging in. "
            "Someone may be intercepting the connection, or the address now belongs to another "
            "machine."
        ) from None
    except paramiko.AuthenticationException as err:
        client.close()
        raise _AttemptFailed("auth", f"the key was refused for user {spec.user} ({err})") from None
    except paramiko.SSHException as err:
        client.close()
        text = str(err)
        if "no acceptable host key" in text or "known_hosts" in text:
            raise HostKeyMismatchError(
                f"{what} did not offer the pinned {key.get_name()} host key; refused before "
                "logging in."
            ) from None
        if "banner" in text.lower():
            raise _AttemptFailed("protocol", "no SSH greeting (sshd still starting?)") from None
        raise _AttemptFailed("protocol", text or "SSH negotiation failed") from None
    except (OSError, EOFError) as err:
        client.close()
        raise _classify_socket_error(err) from None
    return client


def _attempt(
    target: SSHTarget,
    ssh_config_file: str | os.PathLike | None,
    default_user: str,
    timeout: float,
) -> tuple[SSHConnection, HostSpec]:
    spec = resolve_host(
        target.host, ssh_config_file, port=target.port, user=target.user, default_user=default_user
    )
    pinned = public_key(target.host_public_key)  # before any socket is opened
    hops: list[paramiko.SSHClient] = []
    try:
        for hop_text in spec.proxy_jump:
            hop_user, hop_host, hop_port = parse_hop(hop_text)
            hop = resolve_host(
                hop_host, ssh_config_file, port=hop_port, user=hop_user, default_user=default_user
            )
            key = _known_host_key(hop, target.jump_host_keys)
            if key is None:
                raise SSHConnectError(
                    f"The jump host {hop.alias} has no known host key: pin it in jump_host_keys "
                    "or add it to the known_hosts file its ssh_config entry names."
                )
            sock = _socket_to(hop, hops, timeout)
            what = f"The jump host {hop.alias}"
            hops.append(_login(key, hop, sock, target.client_key, timeout, what))
        sock = _socket_to(spec, hops, timeout)
        client = _login(pinned, spec, sock, target.client_key, timeout, "The instance")
    except BaseException:
        for hop_client in reversed(hops):
            hop_client.close()
        raise
    return SSHConnection(client, spec, hops), spec


def _socket_to(spec: HostSpec, hops: list[paramiko.SSHClient], timeout: float) -> Any:
    """A TCP_NODELAY socket to ``spec``, or a direct-tcpip channel through the last jump host."""
    if not hops:
        return _open_socket(spec.hostname, spec.port, timeout)
    transport = hops[-1].get_transport()
    if transport is None or not transport.is_active():
        raise _AttemptFailed("jump", "the jump host closed the connection")
    try:
        return transport.open_channel(
            "direct-tcpip", (spec.hostname, spec.port), ("127.0.0.1", 0), timeout=timeout
        )
    except paramiko.ChannelException as err:
        raise _AttemptFailed("jump", f"the jump host could not reach it ({err.text})") from None
    except (paramiko.SSHException, OSError, EOFError) as err:
        raise _AttemptFailed("jump", f"the jump host could not reach it ({err})") from None


def connect(
    target: SSHTarget,
    *,
    ssh_config_file: str | os.PathLike | None = None,
    default_user: str = "ubuntu",
    timeout: float = 300.0,
    facts: ConnectFacts | Callable[[], ConnectFacts | None] | None = None,
    on_retry: Callable[[ConnectFailure], None] | None = None,
    attempt_timeout: float = 15.0,
    keepalive: float = 30.0,
) -> SSHConnection:
    """Open an authenticated session to ``target``, retrying until ``timeout`` seconds pass.

    Raises :class:`HostKeyMismatchError` at once when the host proves to hold another key
    (never retried), and :class:`SSHConnectError` with a plain-words diagnosis when the
    deadline passes; ``facts`` (or a function returning them, called only then) feeds it.
    """
    started = time.monotonic()
    deadline = started + max(0.0, timeout)
    delay = 0.25
    attempts = 0
    while True:
        attempts += 1
        remaining = max(0.5, min(attempt_timeout, deadline - time.monotonic()))
        spec: HostSpec | None = None
        try:
            connection, spec = _attempt(target, ssh_config_file, default_user, remaining)
            if keepalive:
                connection.transport.set_keepalive(int(keepalive))
            return connection
        except _AttemptFailed as err:
            spec = spec or resolve_host(
                target.host,
                ssh_config_file,
                port=target.port,
                user=target.user,
                default_user=default_user,
            )
            failure = ConnectFailure(
                err.kind,
                err.detail,
                target.host,
                spec.hostname,
                spec.port,
                spec.user,
                spec.proxy_jump,
                attempts,
                time.monotonic() - started,
            )
        log.debug("SSH attempt %d to %s failed: %s", attempts, target.host, failure.detail)
        if on_retry is not None:
            on_retry(failure)
        if time.monotonic() + delay >= deadline:
            known = facts() if callable(facts) else facts
            raise SSHConnectError(diagnose(failure, known), failure)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


# -- the diagnosis --------------------------------------------------------------------------------


def _address_allowed(address: str, cidrs: tuple[str, ...]) -> bool | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    for cidr in cidrs:
        try:
            if ip in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue
    return False


def diagnose(failure: ConnectFailure, facts: ConnectFacts | None = None) -> str:
    """A plain-words explanation of why no SSH session came up, most likely cause first."""
    facts = facts or ConnectFacts()
    where = f"{failure.host} (port {failure.port})"
    spent = f" ({failure.attempts} attempts over {failure.elapsed:.0f} s)"
    state = facts.instance_state
    if state is not None and state not in ("running", "pending"):
        return (
            f"Could not reach the instance over SSH: it is {state}, not running. Start it "
            f"again, then retry.{spent}"
        )
    if state == "pending":
        return (
            f"The instance is still starting (pending); SSH is not up yet. Retry in a "
            f"minute.{spent}"
        )
    if failure.kind == "jump":
        return f"The jump host could not reach {where}: {failure.detail}.{spent}"
    if failure.kind == "dns":
        return f"The address {failure.host} could not be resolved: {failure.detail}.{spent}"
    no_public = (
        not failure.via
        and facts.instance_state is not None
        and not facts.public_address
        and failure.kind in ("timeout", "unreachable", "refused")
    )
    if no_public:
        return (
            "The instance has no public address, so this machine cannot reach it directly. "
            "Launch it in a subnet that assigns public IPs, or reach it through a bastion with "
            f"ProxyJump in c.Provisioner.ssh_config_file.{spent}"
        )
    if failure.kind in ("timeout", "unreachable"):
        if facts.caller_address and facts.allowed_cidrs is not None:
            allowed = _address_allowed(facts.caller_address, facts.allowed_cidrs)
            if allowed is False:
                group = f" {facts.security_group}" if facts.security_group else ""
                sources = ", ".join(facts.allowed_cidrs) or "nowhere"
                return (
                    f"The security group{group} admits SSH only from {sources}, but this "
                    f"machine's address is {facts.caller_address} (it may have changed). "
                    f"Reconnect to update the rule, or add your address to "
                    f"c.EC2Backend.ssh_cidrs.{spent}"
                )
        return (
            f"Nothing answered on {where}: a firewall, network ACL or route drops SSH "
            f"packets, or the instance is still booting.{spent}"
        )
    if failure.kind == "refused":
        return (
            f"{where} refused the connection: no SSH server is listening there (the instance "
            f"is still booting, or its image does not start sshd).{spent}"
        )
    if failure.kind == "auth":
        return (
            f"The instance proved its pinned host key but did not accept the managed key for "
            f"user {failure.user}: the login user may be wrong for this image (Ubuntu images "
            f"use 'ubuntu'; see c.Provisioner.login_user), or cloud-init has not installed the "
            f"key.{spent}"
        )
    if failure.kind == "reset":
        return f"{where} kept closing the connection during the SSH handshake.{spent}"
    return f"{where} answered, but the SSH handshake failed: {failure.detail}.{spent}"


__all__ = [
    "CommandResult",
    "ConnectFacts",
    "ConnectFailure",
    "HostSpec",
    "SSHConnectError",
    "SSHConnection",
    "SSHTarget",
    "connect",
    "diagnose",
    "disabled_host_key_algorithms",
    "parse_hop",
    "public_key",
    "resolve_host",
]
