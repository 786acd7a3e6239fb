"""Instance hosts: what EC2 and cloud-init do at boot, played by private OpenSSH daemons.

:class:`SSHHost` is one private ``sshd`` on a free 127.0.0.1 port with a given ed25519 host key
and authorized keys. :class:`InstanceHosts` watches the simulated cloud and, for every instance
that runs, starts an :class:`SSHHost` with the host key from the instance's cloud-config user-data
and the instance key pair's public key, and maps the instance's addresses to that port in an
OpenSSH-style ``ssh_config`` file whose last entry sends every other host to a closed loopback
port. When an instance stops or terminates, its daemon stops and every process whose command
line holds the instance id ends, as a real stop would end them. While an :class:`InstanceHosts`
is open, moto's instances boot like EC2's (see :class:`_MotoBootHooks`): a start of a running
instance changes nothing, and with a boot delay a booting instance reads ``pending`` until its
host is up.

The instance host is this machine: processes are only ever ended by PID, never this process or
one of its ancestors. Run as root, any user of the machine may log in (the default login user is
root); run as anyone else, sshd runs as that user, who is then the only one who can log in and
the default login user (:func:`current_user`), and the harness writes only under ``workdir``.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import copy
import email
import gzip
import logging
import os
import pwd
import signal
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .cloud import ClosedPort, SimulatedCloud, free_port

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
"""The OpenSSH server binary (Debian's ``openssh-server``)."""

_CAT = os.path.realpath("/bin/cat")  # sshd wants a root-owned absolute path, no symlinks

RUNNING_STATES = {"running"}
DOWN_STATES = {"stopping", "stopped", "shutting-down", "terminated"}


# -- who we are -------------------------------------------------------------------------------


def current_user() -> str:
    """The name of the user this process runs as: the login user of every host by default.

    As root, every user of the machine can log in to a host (and provisioning may create a
    notebook user); otherwise sshd runs as this user and only this user can log in, so the login
    and notebook users are both this user (NOTES.md).
    """
    return pwd.getpwuid(os.geteuid()).pw_name


# -- keys -------------------------------------------------------------------------------------


def generate_host_key() -> str:
    """A new ed25519 private key as OpenSSH PEM text."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def _load_ed25519(private_text: str) -> Ed25519PrivateKey:
    """Parse an ed25519 private key (OpenSSH or PKCS#8 PEM); refuse any other type."""
    data = private_text.encode()
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("The host key must be an ed25519 private key.")
    return key


def public_key_of(private_text: str) -> str:
    """The ``ssh-ed25519 AAAA…`` public line of an ed25519 private key."""
    return (
        _load_ed25519(private_text)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


# -- processes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    state: str
    cmdline: bytes


def _process_table() -> dict[int, _Proc]:
    """Every process visible in /proc, with its parent, state and command line."""
    table: dict[int, _Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue  # gone meanwhile
        # The command name may hold spaces and parentheses: split after the last ')'.
        rest = stat[stat.rfind(b")") + 2 :].split()
        table[pid] = _Proc(pid, int(rest[1]), rest[0].decode(), cmdline)
    return table


def _protected_pids(table: dict[int, _Proc]) -> set[int]:
    """This process and its ancestors: never to be signalled by the harness."""
    protected = {0, 1}
    pid = os.getpid()
    while pid > 1 and pid not in protected:
        protected.add(pid)
        pid = table[pid].ppid if pid in table else 1
    return protected


def _descendants(root: int, table: dict[int, _Proc]) -> list[int]:
    """Every live descendant of ``root`` (children before grandchildren)."""
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, queue = [], list(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        if table[pid].state != "Z":
            found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def processes_with_marker(marker: str, table: dict[int, _Proc] | None = None) -> list[int]:
    """PIDs of live processes whose command line contains ``marker`` (never this process)."""
    table = _process_table() if table is None else table
    needle = marker.encode()
    protected = _protected_pids(table)
    return [
        proc.pid
        for proc in table.values()
        if needle in proc.cmdline and proc.state != "Z" and proc.pid not in protected
    ]


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def _signal(pids: list[int], signum: int) -> None:
    """Send ``signum`` to each PID that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def end_processes(pids: list[int], timeout: float = 3.0) -> None:
    """End ``pids``: SIGTERM (and SIGCONT, for frozen ones), then SIGKILL what is left."""
    protected = _protected_pids(_process_table())
    pids = [pid for pid in pids if pid not in protected]
    if not pids:
        return
    _signal(pids, signal.SIGTERM)
    _signal(pids, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        if not pids:
            return
        time.sleep(0.02)
    _signal(pids, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.02)


def end_processes_with_marker(marker: str, timeout: float = 3.0) -> list[int]:
    """End every process whose command line contains ``marker``; return their PIDs."""
    pids = processes_with_marker(marker)
    end_processes(pids, timeout)
    return pids


# -- one sshd ---------------------------------------------------------------------------------


_live_hosts: weakref.WeakSet[SSHHost] = weakref.WeakSet()


def _quote(value: str | Path) -> str:
    """A path as an sshd_config argument: quoted, with ``%`` escaped from token expansion."""
    return '"' + str(value).replace("%", "%%") + '"'


def _write_file(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` atomically, with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


class SSHHost:
    """A private OpenSSH ``sshd`` on a free 127.0.0.1 port: one simulated instance host."""

    def __init__(
        self,
        workdir: str | Path,
        host_key_private: str,
        authorized_keys: list[str],
        login_user: str | None = None,
        *,
        port: int | None = None,
        avoid_ports: set[int] | frozenset[int] = frozenset(),
        process_marker: str | None = None,
        sshd_path: str = SSHD,
    ):
        self.workdir = Path(workdir)
        self.login_user = login_user or current_user()
        self.process_marker = process_marker
        self._key = _load_ed25519(host_key_private)
        self._authorized_keys = [k.strip() for k in authorized_keys if k and k.strip()]
        self._port = port
        self._fixed_port = port is not None
        self._avoid_ports = set(avoid_ports)
        self._sshd = sshd_path
        self._proc: subprocess.Popen | None = None
        self._log_file: Any = None
        self._paused: list[int] = []

    # -- files -------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """The generated ``sshd_config``."""
        return self.workdir / "sshd_config"

    @property
    def host_key_path(self) -> Path:
        """The host private key file (mode 0600)."""
        return self.workdir / "ssh_host_ed25519_key"

    @property
    def authorized_keys_path(self) -> Path:
        """The authorized keys every user of this host logs in with."""
        return self.workdir / "authorized_keys"

    @property
    def pid_path(self) -> Path:
        """sshd's PidFile."""
        return self.workdir / "sshd.pid"

    @property
    def log_path(self) -> Path:
        """sshd's log (its stderr; appended to across restarts)."""
        return self.workdir / "sshd.log"

    @property
    def host_public_key(self) -> str:
        """The host key's public line (``ssh-ed25519 AAAA…``), what a client should pin."""
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )

    @property
    def authorized_keys(self) -> list[str]:
        """The public keys that may log in."""
        return list(self._authorized_keys)

    def set_authorized_keys(self, keys: list[str]) -> None:
        """Replace the authorized keys (sshd reads the file at each login)."""
        self._authorized_keys = [k.strip() for k in keys if k and k.strip()]
        if self.workdir.exists():
            self._write_authorized_keys()

    # -- state -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port sshd listens on (127.0.0.1)."""
        if self._port is None:
            raise RuntimeError("The host has not been started.")
        return self._port

    @property
    def address(self) -> str:
        """The address sshd listens on."""
        return "127.0.0.1"

    @property
    def pid(self) -> int | None:
        """The PID of the listening sshd, or None when stopped."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def is_running(self) -> bool:
        """Whether the listening sshd process is alive (paused counts as alive)."""
        return self.pid is not None

    @property
    def is_paused(self) -> bool:
        """Whether :meth:`pause` froze the host."""
        return bool(self._paused)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> SSHHost:
        """Start sshd; return once it listens on its port."""
        if self.is_running:
            return self
        self._prepare_files()
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            if not self._fixed_port:
                self._port = self._pick_port()
            self._write_config()
            if self._launch(timeout):
                _live_hosts.add(self)
                return self
            log.debug("sshd did not come up on port %s (attempt %d)", self._port, attempt + 1)
        raise RuntimeError(
            f"sshd did not start on 127.0.0.1:{self._port}; see {self.log_path}:\n"
            + self._log_tail()
        )

    def stop(self, timeout: float = 3.0) -> None:
        """Stop sshd and every session it serves (by PID), as a powered-off host."""
        self._paused = []
        proc, self._proc = self._proc, None
        if proc is not None:
            pids = [proc.pid] + _descendants(proc.pid, _process_table())
            end_processes(pids, timeout)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _live_hosts.discard(self)

    def restart(self, timeout: float = 10.0) -> SSHHost:
        """Stop (dropping every connection) and start again on the same port."""
        self.stop()
        self._fixed_port = self._port is not None or self._fixed_port
        return self.start(timeout)

    def pause(self) -> None:
        """Freeze the host: SIGSTOP sshd, its sessions and the processes of its marker."""
        if self._proc is None or self._paused:
            return
        table = _process_table()
        pids = [self._proc.pid] + _descendants(self._proc.pid, table)
        if self.process_marker:
            pids += [p for p in processes_with_marker(self.process_marker, table) if p not in pids]
        protected = _protected_pids(table)
        self._paused = [pid for pid in pids if pid not in protected]
        _signal(self._paused, signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a host frozen by :meth:`pause`."""
        paused, self._paused = self._paused, []
        _signal(paused, signal.SIGCONT)

    def __enter__(self) -> SSHHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<SSHHost 127.0.0.1:{self._port} {state} {self.workdir}>"

    # -- internals ---------------------------------------------------------------------------

    def _pick_port(self) -> int:
        """A free port that is not one to avoid (e.g. the previous boot's)."""
        for _ in range(50):
            port = free_port()
            if port not in self._avoid_ports:
                return port
        raise RuntimeError("No free loopback port found.")  # pragma: no cover

    def _prepare_files(self) -> None:
        """Create the work directory, host key, authorized keys and /run/sshd."""
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        _write_file(self.host_key_path, private, 0o600)
        self._write_authorized_keys()
        if os.geteuid() == 0:
            # sshd's privilege separation directory; it insists on root-owned, not writable by
            # others. Create it if missing; never change an existing one.
            run_sshd = Path("/run/sshd")
            if not run_sshd.exists():
                run_sshd.mkdir(mode=0o755, parents=True, exist_ok=True)
                os.chmod(run_sshd, 0o755)  # noqa: S103 - what sshd requires

    def _write_authorized_keys(self) -> None:
        """Write the authorized keys file (0600)."""
        text = "".join(f"{key}\n" for key in self._authorized_keys)
        _write_file(self.authorized_keys_path, text, 0o600)

    def _write_config(self) -> None:
        """Write sshd_config for the current port."""
        lines = [
            "# Written by jupyter_ec2.testing.SSHHost: a simulated instance host on loopback.",
            "ListenAddress 127.0.0.1",
            f"Port {self._port}",
            "AddressFamily inet",
            f"HostKey {_quote(self.host_key_path)}",
            f"PidFile {_quote(self.pid_path)}",
            # Every user, the login user and those provisioning creates later (the notebook
            # user), logs in with the instance key; their own ~/.ssh/authorized_keys works too,
            # as on a real instance. sshd reads AuthorizedKeysFile as the target user, who may
            # not reach our private work directory, so the shared file is read by a command
            # running as us.
            "AuthorizedKeysFile .ssh/authorized_keys",
            f"AuthorizedKeysCommand {_CAT} {_quote(self.authorized_keys_path)}",
            f"AuthorizedKeysCommandUser {current_user()}",
            "PubkeyAuthentication yes",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PermitTTY yes",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "StrictModes no",
            "LoginGraceTime 30",
            "MaxStartups 100:30:200",
            "MaxSessions 64",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            # bash sources ~/.bashrc for commands sshd runs when it believes it is the first
            # shell (SHLVL < 2). This machine's root .bashrc runs `pyenv rehash`, whose lock,
            # left behind when a host is stopped mid-login, stalls every later login for 60 s;
            # an image's default user has no such rc. Starting sessions at SHLVL 1 keeps rc
            # files out of non-interactive commands, as on a fresh Ubuntu image.
            "SetEnv SHLVL=1",
        ]
        _write_file(self.config_path, "\n".join(lines) + "\n", 0o600)

    def _launch(self, timeout: float) -> bool:
        """Run sshd and wait until it reports listening; False if it exited instead."""
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open while running
        offset = self._log_file.tell()
        self._proc = subprocess.Popen(
            [self._sshd, "-f", str(self.config_path), "-D", "-e"],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            close_fds=True,
        )
        ready = f"Server listening on 127.0.0.1 port {self._port}".encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if ready in f.read():
                    return True
            time.sleep(0.01)
        self.stop()
        return False

    def _log_tail(self, lines: int = 20) -> str:
        """The last lines of sshd's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all_hosts() -> None:
    """Stop every SSHHost still running in this process (used at exit)."""
    for host in list(_live_hosts):
        try:
            host.stop()
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("Could not stop %r", host)


# -- cloud-config -----------------------------------------------------------------------------


def parse_user_data(raw: bytes) -> dict:
    """The cloud-config of EC2 user-data (plain, gzip or MIME multipart); {} if there is none."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", errors="replace")
    if text.startswith("#cloud-config"):
        data = yaml.safe_load(text)
        return data if isinstance(data, dict) else {}
    head = text[:1024].lower()
    if "content-type:" in head and "multipart" in head:
        merged: dict = {}
        for part in email.message_from_string(text).walk():
            if part.get_content_type() == "text/cloud-config":
                payload = part.get_payload(decode=True) or b""
                data = yaml.safe_load(payload.decode("utf-8", errors="replace"))
                if isinstance(data, dict):
                    merged.update(data)
        return merged
    return {}


# -- moto hooks -------------------------------------------------------------------------------


class _MotoBootHooks:
    """Make moto's instances boot like EC2's while instance hosts watch them.

    moto puts a launched or started instance in ``running`` at once, starts an already running
    instance again (giving it a new public IP), and records nothing of boots. While hooked:
    every launch and every start from ``stopped`` counts a boot on the instance
    (``_jupyter_ec2_boots``), starting a running or pending instance changes nothing (as on
    EC2), and, when a boot delay is wanted, a booting instance reads ``pending`` until the
    harness has its host up. Hooks are counted and removed when the last user releases them.
    """

    _lock = threading.Lock()
    _users = 0
    _delayed_users = 0
    _originals: tuple[Any, Any] | None = None

    @classmethod
    def acquire(cls, delayed: bool) -> None:
        """Install the hooks (once) for one more user."""
        from moto.ec2.models.instances import Instance

        with cls._lock:
            if cls._users == 0:
                cls._originals = (Instance.__init__, Instance.start)
                original_init, original_start = cls._originals

                def __init__(instance: Any, *args: Any, **kwargs: Any) -> None:
                    original_init(instance, *args, **kwargs)
                    instance._jupyter_ec2_boots = 1
                    if cls._delayed_users:
                        instance._state.name, instance._state.code = "pending", 0

                def start(instance: Any) -> Any:
                    if instance._state.name in ("running", "pending"):
                        return copy.copy(instance._state)
                    previous = original_start(instance)
                    instance._jupyter_ec2_boots = getattr(instance, "_jupyter_ec2_boots", 1) + 1
                    if cls._delayed_users:
                        instance._state.name, instance._state.code = "pending", 0
                    return previous

                Instance.__init__ = __init__
                Instance.start = start
            cls._users += 1
            cls._delayed_users += 1 if delayed else 0

    @classmethod
    def release(cls, delayed: bool) -> None:
        """Remove one user; uninstall the hooks after the last."""
        from moto.ec2.models.instances import Instance

        with cls._lock:
            cls._users -= 1
            cls._delayed_users -= 1 if delayed else 0
            if cls._users == 0 and cls._originals is not None:
                Instance.__init__, Instance.start = cls._originals
                cls._originals = None


def _boots(instance: Any) -> int:
    """How many times moto's ``instance`` has booted (1 if it predates the hooks)."""
    return getattr(instance, "_jupyter_ec2_boots", 1)


# -- the hosts of all instances ---------------------------------------------------------------


@dataclass
class _InstanceRecord:
    """What the harness knows of one instance across its boots."""

    instance_id: str
    region: str
    host_key: str | None = None  # pinned at first boot, like cloud-init's host keys
    authorized_keys: list[str] | None = None  # idem: the key pair's key at first boot
    host: SSHHost | None = None
    boot_deadline: float | None = None  # held in `pending` until then
    boots: int = 0  # boots the harness served
    boot_number: int = 0  # moto's boot count of the boot the current host serves
    addresses: list[str] = field(default_factory=list)
    public_ip: str | None = None
    last_public_ip: str | None = None
    last_port: int | None = None


class InstanceHosts:
    """Does what EC2 and cloud-init do at boot, for every instance of a simulated cloud."""

    def __init__(
        self,
        cloud: SimulatedCloud,
        workdir: str | Path,
        boot_delay: float = 0.0,
        login_user: str | None = None,
        *,
        poll_interval: float | None = 0.25,
        regions: list[str] | None = None,
        host_kind: Any = None,
    ):
        self.cloud = cloud
        self.workdir = Path(workdir)
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.boot_delay = boot_delay
        self.login_user = login_user or current_user()
        self.poll_interval = poll_interval
        # None: a private sshd on loopback per instance. Otherwise an object whose boot(hosts,
        # record, instance) returns the started host (with address, port, stop()), with
        # discard(instance_id) for terminate and close() (e.g. containers.ContainerKind).
        self.host_kind = host_kind
        self.regions = list(regions or [cloud.region])
        self._clients = {region: cloud.client("ec2", region=region) for region in self.regions}
        self._records: dict[str, _InstanceRecord] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._closed_port = ClosedPort()
        self._config_text: str | None = None
        self._write_ssh_config()
        _MotoBootHooks.acquire(delayed=boot_delay > 0)
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        if poll_interval:
            self._thread = threading.Thread(
                target=self._poll_loop, name="jupyter-ec2-instance-hosts", daemon=True
            )
            self._thread.start()

    # -- public ------------------------------------------------------------------------------

    @property
    def ssh_config_path(self) -> Path:
        """The OpenSSH-style file mapping every running instance to its loopback sshd."""
        return self.workdir / "ssh_config"

    @property
    def closed_port(self) -> int:
        """The closed loopback port of the catch-all ``Host *`` entry."""
        return self._closed_port.port

    def host_for(self, instance_id: str) -> SSHHost | None:
        """The running host of an instance, or None."""
        with self._lock:
            record = self._records.get(instance_id)
            return record.host if record is not None else None

    def addresses(self, instance_id: str) -> list[str]:
        """The names the ssh_config maps to the instance's host (IPs, DNS names, id)."""
        with self._lock:
            record = self._records.get(instance_id)
            return list(record.addresses) if record is not None and record.host else []

    def wait_for_host(self, instance_id: str, timeout: float = 10.0) -> SSHHost:
        """Wait until the instance's host is up; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            self.sync()
            host = self.host_for(instance_id)
            if host is not None:
                return host
            if time.monotonic() >= deadline:
                raise TimeoutError(f"No host came up for {instance_id} within {timeout} s.")
            time.sleep(0.05)

    def wait_for_no_host(self, instance_id: str, timeout: float = 10.0) -> None:
        """Wait until the instance has no host (stopped, terminated or gone)."""
        deadline = time.monotonic() + timeout
        while True:
            self.sync()
            if self.host_for(instance_id) is None:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"The host of {instance_id} is still up after {timeout} s.")
            time.sleep(0.05)

    def sync(self) -> None:
        """Bring hosts in line with the cloud now (the background thread calls this too)."""
        with self._lock:
            if self._closed:
                return
            described: dict[str, tuple[str, dict]] = {}
            for region, client in self._clients.items():
                for instance in self._describe(client):
                    described[instance["InstanceId"]] = (region, instance)
            for instance_id in list(self._records):
                if instance_id not in described:  # the cloud forgot it (reset)
                    self._shut_down(self._records.pop(instance_id))
                    self._discard(instance_id)
            for instance_id, (region, instance) in described.items():
                record = self._records.get(instance_id)
                if record is None:
                    record = self._records[instance_id] = _InstanceRecord(instance_id, region)
                try:
                    self._sync_one(record, instance)
                except Exception:
                    log.exception("Could not bring the host of %s in line", instance_id)
            self._write_ssh_config()

    def close(self) -> None:
        """Stop the poller, every host and every instance process; keep the files."""
        self._stop_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for record in self._records.values():
                self._shut_down(record)
            self._write_ssh_config(force=True)
            self._closed_port.close()
            if self.host_kind is not None:
                self.host_kind.close()
            _MotoBootHooks.release(delayed=self.boot_delay > 0)

    def __enter__(self) -> InstanceHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        """Call :meth:`sync` every ``poll_interval`` seconds until closed."""
        while not self._stop_event.wait(self.poll_interval):
            try:
                self.sync()
            except Exception as error:  # the cloud may be resetting or gone
                log.debug("InstanceHosts poll failed: %s", error)

    def _describe(self, client: Any) -> list[dict]:
        """Every instance of a region, whatever its state."""
        instances = []
        for page in client.get_paginator("describe_instances").paginate():
            for reservation in page.get("Reservations", []):
                instances.extend(reservation.get("Instances", []))
        return instances

    def _sync_one(self, record: _InstanceRecord, instance: dict) -> None:
        """Move one instance's host one step towards the cloud's state."""
        state = instance["State"]["Name"]
        if state in RUNNING_STATES:
            if record.host is not None:
                if _boots(self._backend_instance(record)) == record.boot_number:
                    return
                # It stopped and started again between two polls: that was a reboot.
                self._shut_down(record)
            if record.boot_deadline is None and self.boot_delay > 0:
                # Seen running before the hooks could hold it: hold it in `pending` now.
                self._set_state(record, "pending", 0)
                record.boot_deadline = time.monotonic() + self.boot_delay
                return
            self._boot(record)
            record.boot_deadline = None
        elif state == "pending":
            if record.host is not None:
                self._shut_down(record)  # a reboot between two polls, held in pending
            if record.boot_deadline is None:
                record.boot_deadline = time.monotonic() + self.boot_delay
            if time.monotonic() >= record.boot_deadline:
                self._boot(record)
                self._set_state(record, "running", 16)
                record.boot_deadline = None
        elif state in DOWN_STATES:
            record.boot_deadline = None
            if record.host is not None:
                self._shut_down(record)
            if state == "terminated":
                self._discard(record.instance_id)

    def _backend_instance(self, record: _InstanceRecord) -> Any:
        """moto's in-process object for the instance."""
        return self.cloud.ec2_backend(record.region).get_instance(record.instance_id)

    def _set_state(self, record: _InstanceRecord, name: str, code: int) -> None:
        """Change the instance's state in moto (no API exists for this)."""
        instance = self._backend_instance(record)
        instance._state.name = name
        instance._state.code = code

    def _boot(self, record: _InstanceRecord) -> None:
        """First boot: pin host key and authorized keys; every boot: new address, new sshd."""
        if record.host_key is None:
            record.host_key, record.authorized_keys = self._first_boot_keys(record)
        instance = self._backend_instance(record)
        self._ensure_new_public_ip(record, instance)
        if self.host_kind is not None:
            host = self.host_kind.boot(self, record, instance)
        else:
            host = SSHHost(
                self.workdir / "hosts" / record.instance_id,
                record.host_key,
                record.authorized_keys or [],
                self.login_user,
                avoid_ports={record.last_port} if record.last_port else frozenset(),
                process_marker=record.instance_id,
            )
            host.start()
        record.host = host
        record.boots += 1
        record.boot_number = _boots(instance)
        record.last_port = host.port
        record.public_ip = instance.public_ip
        record.addresses = [
            name
            for name in (
                instance.public_ip,
                instance.private_ip,
                instance.public_dns_name,
                instance.private_dns_name,
                record.instance_id,
            )
            if name
        ]
        log.info("Host of %s up on %s:%d", record.instance_id, host.address, host.port)

    def _ensure_new_public_ip(self, record: _InstanceRecord, instance: Any) -> None:
        """Give the instance a public IP unlike its last boot's and unlike other instances'."""
        from moto.ec2.utils import random_public_ip

        nic = instance.nics[0] if instance.nics else None
        if nic is None or not nic.public_ip:
            return
        taken = {r.public_ip for r in self._records.values() if r.host is not None}
        taken.add(record.last_public_ip)
        while nic.public_ip in taken:
            nic.public_ip = random_public_ip()

    def _first_boot_keys(self, record: _InstanceRecord) -> tuple[str, list[str]]:
        """The host key from cloud-config (or a new one) and the login user's keys."""
        client = self._clients[record.region]
        answer = client.describe_instance_attribute(
            InstanceId=record.instance_id, Attribute="userData"
        )
        encoded = answer.get("UserData", {}).get("Value") or ""
        try:
            raw = base64.b64decode(encoded)
        except (binascii.Error, ValueError):
            raw = encoded.encode()
        config = parse_user_data(raw) if raw else {}
        ssh_keys = config.get("ssh_keys") if isinstance(config.get("ssh_keys"), dict) else {}
        host_key = ssh_keys.get("ed25519_private") or generate_host_key()

        keys: list[str] = []
        key_name = self._backend_instance(record).key_name
        if key_name:
            pairs = client.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)
            keys += [p["PublicKey"] for p in pairs.get("KeyPairs", []) if p.get("PublicKey")]
        extra = config.get("ssh_authorized_keys")
        if isinstance(extra, list):
            keys += [k for k in extra if isinstance(k, str)]
        return host_key, keys

    def _discard(self, instance_id: str) -> None:
        """Terminated: the host kind deletes the instance's disk (the sshd kind has none)."""
        if self.host_kind is not None:
            self.host_kind.discard(instance_id)

    def _shut_down(self, record: _InstanceRecord) -> None:
        """Power off: stop the sshd and end every process of the instance, by PID."""
        if record.host is not None:
            record.last_port = record.host.port
            # The disk keeps /etc/ssh: a key rotated on the instance is the next boot's key.
            with contextlib.suppress(OSError, ValueError):
                on_disk = record.host.host_key_path.read_text()
                _load_ed25519(on_disk)
                record.host_key = on_disk
            record.host.stop()
            record.host = None
        record.last_public_ip = record.public_ip
        record.public_ip = None
        record.addresses = []
        ended = end_processes_with_marker(record.instance_id)
        if ended:
            log.info("Ended %d process(es) of %s: %s", len(ended), record.instance_id, ended)

    def _write_ssh_config(self, force: bool = False) -> None:
        """Rewrite the ssh_config file atomically when its content changes."""
        lines = [
            "# Written by jupyter_ec2.testing.InstanceHosts: every instance is on loopback.",
            "",
        ]
        for record in sorted(self._records.values(), key=lambda r: r.instance_id):
            if record.host is None or self._closed:
                continue
            lines += [
                "Host " + " ".join(record.addresses),
                f"    HostName {record.host.address}",
                f"    Port {record.host.port}",
                f"    User {self.login_user}",
                "",
            ]
        lines += [
            "# Anything else goes to a closed loopback port: nothing ever leaves this machine.",
            "Host *",
            "    HostName 127.0.0.1",
            f"    Port {self._closed_port.port}",
            "",
        ]
        text = "\n".join(lines)
        if force or text != self._config_text:
            _write_file(self.ssh_config_path, text, 0o644)
            self._config_text = text


atexit.register(stop_all_hosts)
