"""Container-kind instance hosts: each running instance is a booted systemd container.

The second kind of instance host (DESIGN.md §6). For every instance the simulated cloud reports
running, :class:`ContainerKind` boots a ``systemd-nspawn`` container from the Debian 12 root that
``make container-root`` builds (``jupyter_ec2/testing/rootfs/``): systemd, then cloud-init reading
the instance's real user-data and key pair from a NoCloud seed, then sshd with the host key that
user-data pinned. Each container has its own writable disk (an overlay on the read-only root, kept
across stop and start, deleted on terminate) and its own network namespace, joined by a veth pair
to a bridge this harness owns, with the private address the simulated cloud assigned (moto's
default VPC is 172.31.0.0/16; the bridge's host side takes an address in it, so this machine
reaches every container directly). apt and pip inside reach only the mirrors the harness serves on
the bridge address (:class:`Mirrors`): a flat apt repository of the few packages setup.sh may
install and a package index of the wheels the environments install.

``shutdown -h now`` inside stops the instance in the simulated cloud; ``reboot`` inside boots the
container again. Everything is removed at close: processes (by PID), namespaces, veths, the
bridge, mounts and disks. Only root can do this (``available()`` says whether this machine can).

Use it through :class:`~jupyter_ec2.testing.hosts.InstanceHosts`::

    kind = ContainerKind(workdir)
    hosts = InstanceHosts(cloud, workdir, login_user="admin", host_kind=kind)
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import html
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import urllib.parse
import weakref
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from .hosts import _descendants, _process_table, end_processes, public_key_of
from .saved_images import DiskImages

log = logging.getLogger(__name__)

SIM_DIR = Path(os.environ.get("JUPYTER_EC2_SIM_DIR", "/opt/jupyter-ec2-sim"))
CONTAINER_DIR = SIM_DIR / "container"
"""Where ``make container-root`` puts the root (``root/``) and the apt repository (``apt/``)."""
WHEELS_DIR = SIM_DIR / "wheels"
"""The wheels of the environments (``make sim-image``), served as a package index."""

VPC_NETWORK = ipaddress.ip_network("172.31.0.0/16")
"""moto's default VPC: every private address it assigns is in here."""
LOGIN_USER = "admin"
"""The root's login user, as on Debian's official images."""

_NSPAWN = "/usr/bin/systemd-nspawn"
_REBOOT_EXIT = 133  # systemd-nspawn's exit status when the container asked for a reboot


def available(container_dir: Path = CONTAINER_DIR) -> str | None:
    """None when container hosts can run here, else why not (for skips and the demo)."""
    if os.geteuid() != 0:
        return "container hosts need root (network namespaces, mounts, systemd-nspawn)"
    for tool in (_NSPAWN, shutil.which("ip") or "/usr/sbin/ip"):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing: run `make system-deps`"
    if not list(container_dir.glob(".recipe-*")) or not (container_dir / "root").is_dir():
        return f"no container root in {container_dir}: run `make container-root`"
    return None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command (ip, mount, …); raise with its stderr when it fails."""
    proc = subprocess.run(args, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


# -- the mirrors ------------------------------------------------------------------------------


def _normalise(name: str) -> str:
    """A project name as PEP 503 writes it."""
    return re.sub(r"[-_.]+", "-", name).lower()


class _MirrorHandler(SimpleHTTPRequestHandler):
    """Serves ``/apt/…`` (files), ``/wheels/…`` (files) and ``/simple/`` (PEP 503 pages)."""

    apt_dir: Path
    wheels_dir: Path

    def log_message(self, fmt: str, *args: Any) -> None:  # noqa: D102 - quiet
        log.debug("mirror: " + fmt, *args)

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, base in (("/apt/", self.apt_dir), ("/wheels/", self.wheels_dir)):
            if path.startswith(prefix):
                name = urllib.parse.unquote(path[len(prefix) :])  # apt quotes "+" as %2b
                while name.startswith("./"):  # apt asks for "./Packages" of a flat repository
                    name = name[2:]
                if "/" in name.strip("/") or name.startswith("."):
                    return "/nonexistent"
                return str(base / name) if name else str(base)
        return "/nonexistent"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path.startswith("/simple/"):
            self._simple(path[len("/simple/") :].strip("/"))
        else:
            super().do_GET()

    def _simple(self, project: str) -> None:
        """The index page, or one project's page linking its wheels."""
        files: dict[str, list[str]] = {}
        for wheel in sorted(self.wheels_dir.glob("*.whl")):
            files.setdefault(_normalise(wheel.name.split("-", 1)[0]), []).append(wheel.name)
        if not project:
            links = [f'<a href="/simple/{n}/">{n}</a>' for n in sorted(files)]
        elif _normalise(project) in files:
            links = [
                f'<a href="/wheels/{html.escape(f)}">{html.escape(f)}</a>'
                for f in files[_normalise(project)]
            ]
        else:
            self.send_error(404, "no such project")
            return
        body = (
            "<!DOCTYPE html><html><body>\n" + "<br>\n".join(links) + "\n</body></html>\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Mirrors:
    """The apt repository and the package index, served on one address (the bridge's) only."""

    def __init__(self, address: str, apt_dir: Path, wheels_dir: Path):
        handler = type(
            "MirrorHandler", (_MirrorHandler,), {"apt_dir": apt_dir, "wheels_dir": wheels_dir}
        )
        self._server = ThreadingHTTPServer((address, 0), handler)
        self._server.daemon_threads = True
        self.address = address
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="jupyter-ec2-mirrors", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://172.31.250.7:41234``."""
        return f"http://{self.address}:{self.port}"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


# -- the bridge -------------------------------------------------------------------------------


class Bridge:
    """A Linux bridge owned by one harness, with a host address in moto's default VPC.

    Several harnesses may run at once on this machine, each with its own bridge in the same
    172.31.0.0/16: the host address is a /32 and each container gets a /32 route, so no two
    bridges claim the whole subnet.
    """

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.name = f"je2br{self.tag}"
        taken = _run("ip", "-o", "-4", "addr", "show").stdout
        for _ in range(100):
            candidate = f"172.31.{secrets.choice(range(200, 255))}.{secrets.choice(range(2, 254))}"
            if f" {candidate}/" not in taken:
                break
        self.address = candidate
        _run("ip", "link", "add", self.name, "type", "bridge")
        try:
            _run("ip", "addr", "add", f"{self.address}/32", "dev", self.name)
            _run("ip", "link", "set", self.name, "up")
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Delete the bridge (its routes go with it)."""
        _run("ip", "link", "del", self.name, check=False)


# -- one container ------------------------------------------------------------------------------


class ContainerHost:
    """One instance's container: its disk, network namespace and (while running) nspawn."""

    def __init__(
        self,
        kind: ContainerKind,
        instance_id: str,
        private_ip: str,
        hostname: str,
        user_data: bytes,
        public_keys: list[str],
        on_poweroff: Any,
    ):
        self.kind = kind
        self.instance_id = instance_id
        self.address = private_ip
        self.port = 22
        self.login_user = LOGIN_USER
        self.hostname = hostname
        self.user_data = user_data
        self.public_keys = public_keys
        self._on_poweroff = on_poweroff
        self.dir = kind.workdir / instance_id
        self.netns = f"je2-{kind.bridge.tag}-{instance_id[-8:]}"
        self.veth = f"je2v{secrets.token_hex(4)}"
        self._proc: subprocess.Popen | None = None
        self._stopping = False
        self._watcher: threading.Thread | None = None
        self.boots = 0
        self.reboots = 0
        self.image_id: str | None = None  # the image it was launched from (saved images)
        self._lock = threading.Lock()

    # -- facts -------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The container's root directory (the overlay of its disk on the read-only root)."""
        return self.dir / "merged"

    @property
    def disk(self) -> Path:
        """The instance's own disk: the overlay's upper directory (what an image saves)."""
        return self.dir / "disk"

    @property
    def host_key_path(self) -> Path:
        """The instance's ed25519 host key on its disk (what cloud-init or a rotation wrote)."""
        return self.root / "etc/ssh/ssh_host_ed25519_key"

    @property
    def log_path(self) -> Path:
        """The container's console (systemd-nspawn's output), appended to across boots."""
        return self.dir / "console.log"

    @property
    def pid(self) -> int | None:
        """systemd-nspawn's PID while the container runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def is_running(self) -> bool:
        """Whether the container is up (booting counts)."""
        return self.pid is not None

    @property
    def host_public_key(self) -> str | None:
        """The ed25519 host key the user-data pins (what cloud-init installs), if any."""
        from .hosts import parse_user_data

        keys = parse_user_data(self.user_data).get("ssh_keys") or {}
        private = keys.get("ed25519_private") if isinstance(keys, dict) else None
        return public_key_of(private) if private else None

    def leader_pid(self) -> int | None:
        """The PID (on this machine) of the container's systemd."""
        pid = self.pid
        if pid is None:
            return None
        table = _process_table()
        for candidate in _descendants(pid, table):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{candidate}/ns/pid") != os.readlink(f"/proc/{pid}/ns/pid"):
                    # The first process in a new PID namespace is its init; its parent may be an
                    # intermediate nspawn process.
                    return candidate
        return None

    def exec(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command as root inside the running container (nsenter into its namespaces)."""
        leader = self.leader_pid()
        if leader is None:
            raise RuntimeError(f"The container of {self.instance_id} is not running.")
        return subprocess.run(
            ["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", "--", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ContainerHost:
        """Boot the container (first boot: create its disk and NoCloud seed)."""
        with self._lock:
            if self.is_running:
                return self
            self._stopping = False
            self._prepare_disk()
            self._prepare_network()
            self._launch()
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Power the container off (keep its disk); its network namespace goes."""
        with self._lock:
            self._stopping = True
            proc = self._proc
            if proc is not None and proc.poll() is None:
                # nspawn turns SIGTERM into a clean poweroff of the container's systemd.
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pids = [proc.pid] + _descendants(proc.pid, _process_table())
                    end_processes(pids, timeout=2)
                    proc.wait(timeout=5)
            self._proc = None
            self._teardown_network()
            self._unmount()

    def discard(self) -> None:
        """Terminate: stop and delete the disk."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- internals -----------------------------------------------------------------------------

    def _prepare_disk(self) -> None:
        """Mount the overlay (upper = this instance's disk) and, on first boot, seed it."""
        upper, work = self.dir / "disk", self.dir / "work"
        first = not upper.exists()
        if first:
            self.kind.disk_images.restore(self.image_id, upper)  # launched from a saved image
        for path in (upper, work, self.root):
            path.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(self.root):
            _run(
                "mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={self.kind.root_dir},upperdir={upper},workdir={work}",
                str(self.root),
            )  # fmt: skip
        if first:
            self._write_seed()
        self._write_mirror_config()

    def _write_seed(self) -> None:
        """The NoCloud seed: the instance's real user-data and its meta-data."""
        seed = self.root / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "user-data").write_bytes(self.user_data)
        meta = {
            "instance-id": self.instance_id,
            "local-hostname": self.hostname,
            "public-keys": self.public_keys,
        }
        (seed / "meta-data").write_text(yaml.safe_dump(meta, sort_keys=False))
        os.chmod(seed / "user-data", 0o600)

    def _write_mirror_config(self) -> None:
        """Point apt and pip at the harness's mirrors only (rewritten each boot: a new port)."""
        url, host = self.kind.mirrors.url, self.kind.mirrors.address
        (self.root / "etc/apt/sources.list").write_text(f"deb [trusted=yes] {url}/apt/ ./\n")
        (self.root / "etc/pip.conf").write_text(
            f"[global]\nindex-url = {url}/simple/\ntrusted-host = {host}\n"
        )
        uv = self.root / "etc/uv"
        uv.mkdir(exist_ok=True)
        (uv / "uv.toml").write_text(f'index-url = "{url}/simple/"\n')

    def _prepare_network(self) -> None:
        """A network namespace whose eth0 has the private address, on the harness's bridge."""
        bridge, ns, peer = self.kind.bridge, self.netns, f"{self.veth}c"
        self._teardown_network()
        _run("ip", "netns", "add", ns)
        try:
            _run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", ns)
            _run("ip", "-n", ns, "link", "set", peer, "name", "eth0")
            _run("ip", "-n", ns, "addr", "add", f"{self.address}/32", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            # Only the harness's address is reachable: no default route, nothing else on-link.
            _run("ip", "-n", ns, "route", "add", f"{bridge.address}/32", "dev", "eth0")
            # And the instances of its own /20 subnet, on this bridge only, as in a VPC (Dask
            # workers reach their scheduler). Bridge addresses are never in such a subnet.
            subnet = ipaddress.ip_network(f"{self.address}/20", strict=False)
            if ipaddress.ip_address(bridge.address) not in subnet:
                _run("ip", "-n", ns, "route", "add", str(subnet), "dev", "eth0")
            _run("ip", "link", "set", self.veth, "master", bridge.name, "up")
            _run("ip", "route", "replace", f"{self.address}/32", "dev", bridge.name,
                 "src", bridge.address)  # fmt: skip
        except Exception:
            self._teardown_network()
            raise

    def _teardown_network(self) -> None:
        """Delete the namespace (its veth end goes with it), the host veth and the route."""
        _run("ip", "netns", "del", self.netns, check=False)
        _run("ip", "link", "del", self.veth, check=False)
        _run("ip", "route", "del", f"{self.address}/32", "dev", self.kind.bridge.name, check=False)

    def _unmount(self) -> None:
        """Unmount the overlay (lazily if something still holds it)."""
        if os.path.ismount(self.root) and _run("umount", str(self.root), check=False).returncode:
            _run("umount", "-l", str(self.root), check=False)

    def _launch(self) -> None:
        """Start systemd-nspawn and a thread that watches it exit."""
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                [
                    _NSPAWN, "-D", str(self.root), "-b", "-q", "--register=no", "--keep-unit",
                    f"--network-namespace-path=/run/netns/{self.netns}",
                    "--console=read-only", f"--machine={self.netns}",
                    f"--hostname={self.hostname}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                close_fds=True,
            )  # fmt: skip
        finally:
            log_file.close()
        self.boots += 1
        proc = self._proc
        self._watcher = threading.Thread(
            target=self._watch, args=(proc,), name=f"nspawn-{self.instance_id}", daemon=True
        )
        self._watcher.start()
        log.info("Container of %s booting (nspawn PID %d)", self.instance_id, proc.pid)

    def _watch(self, proc: subprocess.Popen) -> None:
        """When the container exits by itself: reboot → boot again; poweroff → stop in the cloud."""
        code = proc.wait()
        with self._lock:
            if self._stopping or proc is not self._proc:
                return
            if code == _REBOOT_EXIT:
                log.info("Container of %s rebooted itself", self.instance_id)
                self.reboots += 1
                self._write_mirror_config()
                self._launch()
                return
            log.info("Container of %s powered off (exit %s)", self.instance_id, code)
            self._stopping = True
            self._proc = None
            self._teardown_network()
            self._unmount()
        try:
            self._on_poweroff(self.instance_id)
        except Exception:
            log.exception("Could not stop %s in the simulated cloud", self.instance_id)


# -- the kind -------------------------------------------------------------------------------------


_live_kinds: weakref.WeakSet[ContainerKind] = weakref.WeakSet()


def close_all_kinds() -> None:
    """Remove the containers, namespaces and bridges of every open ContainerKind (at exit)."""
    for kind in list(_live_kinds):
        with contextlib.suppress(Exception):
            kind.close()


atexit.register(close_all_kinds)


class ContainerKind:
    """The container host kind for :class:`~jupyter_ec2.testing.hosts.InstanceHosts`."""

    login_user = LOGIN_USER

    def __init__(
        self,
        workdir: str | Path,
        container_dir: str | Path = CONTAINER_DIR,
        wheels_dir: str | Path = WHEELS_DIR,
    ):
        container_dir = Path(container_dir)
        reason = available(container_dir)
        if reason:
            raise RuntimeError(f"Container instance hosts are unavailable: {reason}.")
        self.root_dir = container_dir / "root"
        self.workdir = Path(workdir) / "containers"
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.bridge = Bridge()
        try:
            self.mirrors = Mirrors(self.bridge.address, container_dir / "apt", Path(wheels_dir))
        except Exception:
            self.bridge.close()
            raise
        self._hosts: dict[str, ContainerHost] = {}
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._closed = False
        # Saved images (issue 15): CreateImage copies an instance's disk, a launch restores it.
        self.disk_images = DiskImages(self.workdir / "images", self.host)
        _live_kinds.add(self)

    @property
    def subnet(self) -> str:
        """The network the containers and the bridge address are in (moto's default VPC)."""
        return str(VPC_NETWORK)

    def boot(self, hosts: Any, record: Any, instance: Any) -> ContainerHost:
        """Boot (or boot again) the container of a running instance; called by InstanceHosts."""
        with self._lock:
            host = self._hosts.get(record.instance_id)
            if host is None:
                client = hosts._clients[record.region]
                self._place_in_default_vpc(instance)
                host = ContainerHost(
                    self,
                    record.instance_id,
                    instance.private_ip,
                    "ip-" + instance.private_ip.replace(".", "-"),
                    _user_data(client, record.instance_id),
                    _key_pair_keys(client, instance.key_name),
                    functools.partial(_stop_in_cloud, client),
                )
                host.image_id = instance.image_id
                self._hosts[record.instance_id] = host
        return host.start()

    def _place_in_default_vpc(self, instance: Any) -> None:
        """Give an instance launched without a subnet an address in the default VPC, as EC2 does.

        moto treats such a launch as EC2-Classic (a random 10.x address); EC2 puts it in the
        default VPC's default subnet (172.31.0.0/20 and up).
        """
        if ipaddress.ip_address(instance.private_ip) in VPC_NETWORK or not instance.nics:
            return
        taken = {h.address for h in self._hosts.values()}
        while True:
            candidate = f"172.31.{secrets.choice(range(16))}.{secrets.choice(range(4, 255))}"
            if candidate not in taken:
                break
        instance.nics[0].private_ip_address = candidate

    def host(self, instance_id: str) -> ContainerHost | None:
        """The container of an instance (running or not), if it has one."""
        return self._hosts.get(instance_id)

    def discard(self, instance_id: str) -> None:
        """Terminate: delete the instance's container and disk."""
        with self._lock:
            host = self._hosts.pop(instance_id, None)
        if host is not None:
            host.discard()

    def close(self) -> None:
        """Remove everything: containers, disks, namespaces, veths, mirrors and the bridge."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            hosts, self._hosts = list(self._hosts.values()), {}
        self.disk_images.close()
        for host in hosts:
            try:
                host.discard()
            except Exception:
                log.exception("Could not remove the container of %s", host.instance_id)
        self.mirrors.close()
        self.bridge.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _user_data(client: Any, instance_id: str) -> bytes:
    """The instance's user-data as EC2 hands it to cloud-init (decoded from base64)."""
    answer = client.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    encoded = answer.get("UserData", {}).get("Value") or ""
    return base64.b64decode(encoded) if encoded else b""


def _key_pair_keys(client: Any, key_name: str | None) -> list[str]:
    """The public key of the instance's key pair (what EC2's metadata hands to cloud-init)."""
    if not key_name:
        return []
    pairs = client.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)
    return [p["PublicKey"].strip() for p in pairs.get("KeyPairs", []) if p.get("PublicKey")]


def _stop_in_cloud(client: Any, instance_id: str) -> None:
    """An instance shut itself down: EC2 then reports it stopped."""
    client.stop_instances(InstanceIds=[instance_id])


# -- entry points for tests, benches and the demo --------------------------------------------


def make_instance_hosts(
    cloud: Any, workdir: str | Path, *, boot_delay: float = 0.0, kind: str = "auto"
) -> tuple[Any, str]:
    """Instance hosts of the wanted kind: ``container``, ``sshd`` or ``auto`` (container if
    this machine can run them); returns ``(InstanceHosts, kind used)``."""
    from .hosts import InstanceHosts

    if kind not in ("auto", "container", "sshd"):
        raise ValueError(f"kind must be auto, container or sshd, not {kind!r}")
    reason = available() if kind != "sshd" else "sshd asked for"
    if kind == "container" and reason:
        raise RuntimeError(f"Container instance hosts are unavailable: {reason}.")
    if reason:
        return InstanceHosts(cloud, workdir, boot_delay=boot_delay), "sshd"
    host_kind = ContainerKind(workdir)
    try:
        hosts = InstanceHosts(
            cloud, workdir, boot_delay=boot_delay, login_user=LOGIN_USER, host_kind=host_kind
        )
    except Exception:
        host_kind.close()
        raise
    return hosts, "container"


def container_config(base: dict[str, Any], *, environment: dict | None = None) -> dict[str, Any]:
    """Turn a :func:`~jupyter_ec2.testing.demo.simulated_config` into one for container hosts.

    Profiles launch ``debian-12``, SSH logs in as ``admin``, the environment is ``pip`` (from
    the harness's package index, which the containers' pip.conf names), and the idle stop
    command is the real one (it powers the container off).
    """
    config = {section: dict(values) for section, values in base.items()}
    config["Provisioner"].update(
        {
            "login_user": LOGIN_USER,
            "environment": environment or {"kind": "pip", "packages": ["jupyterlab"]},
            "idle_stop_command": "sudo shutdown -h now",
        }
    )
    # The container is a real instance: sshd's own files, the defaults.
    for name in ("wheel_dir", "sshd_host_key_file", "sshd_pid_file"):
        config["Provisioner"].pop(name, None)
    profiles = config["EC2Launcher"].get("profiles") or {}
    config["EC2Launcher"]["profiles"] = {
        name: {**profile, "ami": "debian-12"} for name, profile in profiles.items()
    }
    return config
