"""Provisioning over SSH: make a fresh instance a safe Jupyter host, idempotently.

:class:`Provisioner` (a traitlets ``LoggingConfigurable``, configured as ``c.Provisioner.*``)
connects with the pinned host key (:mod:`.ssh`), uploads ``setup.sh``, ``watchdog.py`` and a JSON
parameter file (:mod:`.params`) with SFTP, runs the script as root (through ``sudo`` when the
login user is not root) and streams its step markers back as progress. The script creates the
notebook user, prepares the Python environment, writes the Jupyter config (loopback only, a
random token), starts the server as a service, checks it answers, and starts the idle watchdog.

Every call is synchronous; the manager runs it in a worker thread. Every input is validated
before anything connects, so a bad value fails with a
:class:`~jupyter_ec2.errors.ValidationError` naming the field and nothing runs on the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import posixpath
import secrets
import shlex
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import paramiko
from traitlets import Bool, Dict, Float, Instance, Int, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..errors import HostKeyMismatchError, SSHError, ValidationError
from ..models import validate_environment, validate_idle_stop_minutes
from . import params as _params
from .params import (
    new_token,
    remote_base_url,
    remote_paths,
    user_mode_status_file,
    validate_abs_path,
    validate_instance_id,
    validate_password_hash,
    validate_port,
    validate_seconds,
    validate_stop_command,
    validate_token,
    validate_user_name,
)
from .ssh import (
    CommandResult,
    ConnectFacts,
    ConnectFailure,
    SSHConnectError,
    SSHConnection,
    SSHTarget,
    connect,
    diagnose,
)
from .stop_step import run_on_instance

#: What a dropped or refusing SSH session raises from paramiko's SFTP and channels.
_TRANSPORT_ERRORS = (OSError, EOFError, paramiko.SSHException)

#: Progress callback: ``on_progress(step, percent, text)``.
ProgressCallback = Callable[[str, int, str], None]

#: What each step of ``setup.sh`` does, in the words the user sees.
STEP_LABELS = {
    "connect": "Connecting over SSH",
    "upload": "Uploading the setup script",
    "cloud-init": "Waiting for cloud-init to finish",
    "host-key": "Replacing the handed-over host key",
    "user": "Setting up the notebook user",
    "gpu": "Checking the GPU driver",
    "environment": "Preparing the Python environment",
    "notebooks": "Creating ~/notebooks",
    "tls": "Setting up TLS",
    "config": "Writing the Jupyter config",
    "service": "Running Jupyter as a service",
    "ready": "Checking that Jupyter answers",
    "watchdog": "Setting up idle auto-stop",
}

_UNCHANGED_TEXT = {
    "host-key": "The host key was rotated before",
    "cloud-init": "cloud-init is done",
    "ready": "Jupyter answers with the token",
}

#: The steps of ``setup.sh`` in order.
SCRIPT_STEPS = (
    "cloud-init",
    "host-key",
    "user",
    "gpu",
    "environment",
    "notebooks",
    "tls",
    "config",
    "service",
    "ready",
    "watchdog",
)


class ProvisionError(SSHError):
    """A provisioning step failed; ``step`` names it, ``output`` holds its last output lines."""

    def __init__(self, step: str, message: str, output: tuple[str, ...] = ()):
        super().__init__(message)
        self.step = step
        self.output = output


@dataclass(frozen=True)
class ProvisionResult:
    """What provisioning left on the instance.

    ``port`` is the remote server's port on the instance's loopback, ``token`` its token (keep
    it 0600, never log it), ``tls_fingerprint`` the SHA-256 fingerprint of its certificate
    (``AB:CD:…``) when TLS is on, ``steps`` every step run and ``changed_steps`` those that
    changed something (empty on a re-run over a provisioned host), ``log_lines`` the script's
    output with the token redacted.
    """

    port: int
    token: str = field(repr=False)
    base_url: str
    tls_fingerprint: str | None
    steps: tuple[str, ...]
    changed_steps: tuple[str, ...]
    log_lines: tuple[str, ...] = field(repr=False, default=())
    host_public_key: str | None = None  # the key pinned for the instance after this run

    @property
    def changed(self) -> bool:
        """Whether this run changed anything on the instance."""
        return bool(self.changed_steps)


@dataclass(frozen=True)
class IdleStatus:
    """The idle watchdog's report, as last written on the instance.

    Times are Unix times on the instance's clock; ``read_at`` is this machine's clock when the
    file was read, so :meth:`seconds_left` works even when the two clocks differ.
    """

    enabled: bool
    idle_stop_minutes: float
    idle_since: float | None
    stops_at: float | None
    now: float
    busy: bool
    server_up: bool
    kernels: int
    terminals: int
    read_at: float
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the status file as written (dict-style, for callers that want it raw)."""
        return self.raw.get(key, default)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], read_at: float | None = None) -> IdleStatus:
        """Parse the watchdog's status file."""

        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        return cls(
            enabled=bool(data.get("enabled")),
            idle_stop_minutes=number("idle_stop_minutes") or 0.0,
            idle_since=number("idle_since"),
            stops_at=number("stops_at"),
            now=number("now") or 0.0,
            busy=bool(data.get("busy")),
            server_up=data.get("server") == "up",
            kernels=int(data.get("kernels") or 0),
            terminals=int(data.get("terminals") or 0),
            read_at=time.time() if read_at is None else read_at,
            raw=dict(data),
        )

    def seconds_left(self, at: float | None = None) -> float | None:
        """Seconds until the instance stops itself if it stays idle; None when auto-stop is off."""
        if not self.enabled or self.stops_at is None:
            return None
        at = time.time() if at is None else at
        return max(0.0, self.stops_at - self.now - max(0.0, at - self.read_at))

    def minutes_left(self, at: float | None = None) -> float | None:
        """:meth:`seconds_left` in minutes."""
        seconds = self.seconds_left(at)
        return None if seconds is None else seconds / 60.0

    def to_json(self) -> dict[str, Any]:
        """A JSON shape for the REST API (times as Unix times on the instance's clock)."""
        return {
            "enabled": self.enabled,
            "idle_stop_minutes": self.idle_stop_minutes,
            "idle_since": self.idle_since,
            "stops_at": self.stops_at,
            "busy": self.busy,
            "seconds_left": self.seconds_left(),
        }


def _resource(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


class _ScriptOutput:
    """Parses ``setup.sh``'s output: markers become progress, other lines become log lines."""

    def __init__(self, on_progress: ProgressCallback | None, secrets_: list[str], tail: int):
        self.on_progress = on_progress
        self.secrets = [s for s in secrets_ if s]
        self.step = "start"
        self.percent = 0
        self.steps: list[str] = []
        self.changed: list[str] = []
        self.results: dict[str, str] = {}
        self.failed_step: str | None = None
        self.ended = False
        self.lines: list[str] = []
        self.tail: deque[str] = deque(maxlen=tail)
        #: ``::result KEY VALUE`` lines that want an answer on the script's stdin.
        self.answers: dict[str, Callable[[str], str]] = {}

    def redact(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, "<token>")
        return line

    def progress(self, text: str) -> None:
        if self.on_progress is not None:
            self.on_progress(self.step, self.percent, text)

    def feed(self, raw: str) -> str | None:
        line = self.redact(raw)
        words = line.split()
        if line.startswith("::step ") and len(words) == 3:
            self.step = words[1]
            self.percent = int(words[2]) if words[2].isdigit() else self.percent
            self.tail.clear()
            self.progress(STEP_LABELS.get(self.step, self.step) + "…")
        elif line.startswith("::done ") and len(words) == 3:
            name, outcome = words[1], words[2]
            self.steps.append(name)
            if outcome == "changed":
                self.changed.append(name)
            label = STEP_LABELS.get(name, name)
            if outcome == "changed":
                self.progress(f"{label}: done")
            else:
                self.progress(_UNCHANGED_TEXT.get(name, f"{label}: already done"))
        elif line.startswith("::result ") and len(words) >= 3:
            self.results[words[1]] = line.split(None, 2)[2]
            if words[1] in self.answers:
                return self.answers[words[1]](self.results[words[1]])
        elif line.startswith("::fail ") and len(words) >= 2:
            self.failed_step = words[1]
        elif line.strip() == "::end":
            self.ended = True
            self.percent = 100
        else:
            self.lines.append(line)
            self.tail.append(line)
            self.progress(line)
        return None

    def reason(self) -> str:
        for line in reversed(self.tail):
            if line.startswith("error: "):
                return line[len("error: ") :]
        for line in reversed(self.tail):
            if line.strip():
                return line.strip()
        return "the step failed without saying why"


class Provisioner(LoggingConfigurable):
    """Makes an instance a Jupyter host over SSH: user, environment, config, service, auto-stop."""

    login_user = Unicode(
        "ubuntu",
        help="The image's default user that SSH logs in as (Ubuntu images: 'ubuntu'). "
        "A User in ssh_config_file takes precedence. sudo is used only when it is not root.",
    ).tag(config=True)

    notebook_user = Unicode(
        "jupyter",
        help="The user created on the instance to run Jupyter: no password, the managed key "
        "authorized, no sudo unless notebook_user_sudo. Never root unless "
        "allow_root_notebook_user.",
    ).tag(config=True)

    allow_root_notebook_user = Bool(
        False, help="Allow notebook_user = 'root' (Jupyter then runs with allow_root)."
    ).tag(config=True)

    notebook_user_sudo = Bool(
        False, help="Give the notebook user passwordless sudo on the instance."
    ).tag(config=True)

    environment = Dict(
        help="How Python and Jupyter get onto the instance: "
        "{'kind': 'pip', 'packages': [...]} (a venv; uv when present), "
        "{'kind': 'conda', 'packages': [...], 'installer_url': ...} (Miniforge), or "
        "{'kind': 'existing', 'python': '/abs/path'} (must import jupyter_server). "
        "jupyterlab is always added to pip and conda packages. A profile may override it.",
    ).tag(config=True)

    wheel_dir = Unicode(
        None,
        allow_none=True,
        help="A directory of wheels on the instance: the pip kind then installs only from it "
        "(pip --no-index --find-links DIR), for offline images and tests.",
    ).tag(config=True)

    idle_stop_minutes = Float(
        60,
        help="Stop the instance after this many minutes without kernel or terminal activity "
        "(fractions allowed); 0 turns idle auto-stop off. A profile may override it.",
    ).tag(config=True)

    idle_stop_command = Unicode(
        "sudo shutdown -h now",
        help="What the instance's watchdog runs when idle: split into words like a shell "
        "would, run without one, as root.",
    ).tag(config=True)

    before_stop = Unicode(
        _params.SAVE_NOTEBOOKS,
        help="Run on the instance before every stop and terminate (idle auto-stop, Stop, "
        "Terminate): 'save-notebooks' saves every notebook with unsaved changes open in the "
        "remote JupyterLab (jupyter-collaboration is added to pip and conda environments for "
        "it; an 'existing' one needs it installed); any other text is a shell command run as "
        "the notebook user in ~/notebooks; '' runs nothing. Bounded by before_stop_timeout; "
        "its outcome goes to the instance log; a failure never blocks the stop.",
    ).tag(config=True)

    before_stop_timeout = Float(
        60,
        help="Seconds the before_stop step may take before it is killed and the stop goes on.",
    ).tag(config=True)

    ssh_config_file = Unicode(
        None,
        allow_none=True,
        help="An OpenSSH-style config file consulted for every host (HostName, Port, User, "
        "IdentityFile, ProxyJump, UserKnownHostsFile for jump hosts).",
    ).tag(config=True)

    connect_timeout = Float(
        300,
        help="Seconds to keep trying to reach a booting instance over SSH before giving up "
        "with a diagnosis.",
    ).tag(config=True)

    script_timeout = Float(
        3600,
        help="Seconds the provisioning script may run (package installs included).",
    ).tag(config=True)

    ready_timeout = Float(
        120, help="Seconds to wait for the remote Jupyter server to answer after it starts."
    ).tag(config=True)

    remote_port = Int(
        0,
        help="The remote server's port on the instance's loopback; 0 picks a free one (kept "
        "across re-runs).",
    ).tag(config=True)

    tls = Bool(
        False,
        help="Serve the remote Jupyter over HTTPS with a self-signed certificate for "
        "127.0.0.1/localhost (its fingerprint is returned for pinning). Off by default: the "
        "server listens on loopback and is reached only through SSH.",
    ).tag(config=True)

    password_hash = Unicode(
        None,
        allow_none=True,
        help="An argon2 password hash from jupyter_server.auth.passwd() for the remote "
        "server, in addition to the token; SHA-1 hashes are refused.",
    ).tag(config=True)

    kernel_cull_idle_seconds = Float(
        0,
        help="Shut down kernels idle for this many seconds on the remote server (0 = never).",
    ).tag(config=True)

    base_python = Unicode(
        "python3",
        help="The host's own interpreter (a name on the standard PATH, or an absolute path): "
        "the pip kind makes its venv from it and the idle watchdog runs on it (3.7 or newer).",
    ).tag(config=True)

    package_index_url = Unicode(
        _params.DEFAULT_INDEX_URL,
        help="The package index (simple API) the pip kind gets pip from when the host's python3 "
        "has no ensurepip (stock Debian and Ubuntu images), so no apt is needed. Not used "
        "with wheel_dir, which must then hold a pip wheel.",
    ).tag(config=True)

    cloud_init_timeout = Float(
        900,
        help="Seconds provisioning waits for a running cloud-init to finish (a host where "
        "cloud-init never ran is not waited for); its reported problems go to the log.",
    ).tag(config=True)

    apt_timeout = Float(
        600,
        help="Seconds provisioning waits for apt's locks (apt's daily jobs hold them after a "
        "first boot) when apt is the only way left; the lock holder is named on giving up.",
    ).tag(config=True)

    sysfs_root = Unicode(
        "/sys",
        help="Where the host's sysfs is, in which the gpu step looks for NVIDIA devices (PCI "
        "vendor 0x10de) and their driver: '/sys' on a real instance; a directory for tests.",
    ).tag(config=True)

    apt_root = Unicode(
        "/",
        help="Where apt keeps its state on the host (apt's Dir): '/' on a real instance; a "
        "directory for chroots and tests, whose locks provisioning then waits on.",
    ).tag(config=True)

    rotate_host_key = Bool(
        True,
        help="After the first connection verified with the host key handed over in the "
        "user-data, replace it by a key made on the instance, learnt over that connection and "
        "pinned in the state directory; the handed-over key (readable through the instance "
        "metadata service) then no longer authenticates the instance. Needs a state store.",
    ).tag(config=True)

    sshd_host_key_file = Unicode(
        "/etc/ssh/ssh_host_ed25519_key",
        help="The instance sshd's ed25519 HostKey file, which rotation replaces; "
        "'{instance_id}' in it is replaced (for hosts that serve several instances).",
    ).tag(config=True)

    sshd_pid_file = Unicode(
        "/run/sshd.pid",
        help="sshd's PidFile on the instance: rotation sends that sshd SIGHUP to load the new "
        "key where no ssh/sshd systemd service runs; '{instance_id}' in it is replaced.",
    ).tag(config=True)

    store = Instance(
        "jupyter_ec2.store.StateStore",
        allow_none=True,
        help="Where host keys are pinned (set by the extension); rotation needs it.",
    )

    log_tail_lines = Int(40, help="How many output lines of a failed step its error keeps.").tag(
        config=True
    )

    # -- defaults and validation ----------------------------------------------------------------

    @default("environment")
    def _default_environment(self) -> dict:
        return {"kind": "pip", "packages": ["jupyterlab"]}

    @validate("login_user")
    def _check_login_user(self, proposal: Any) -> str:
        return validate_user_name(proposal["value"], "login_user", allow_root=True)

    @validate("notebook_user")
    def _check_notebook_user(self, proposal: Any) -> str:
        # Whether root is allowed is decided at use, when allow_root_notebook_user is known.
        return validate_user_name(proposal["value"], "notebook_user", allow_root=True)

    @validate("environment")
    def _check_environment(self, proposal: Any) -> dict:
        return validate_environment(proposal["value"])

    @validate("wheel_dir")
    def _check_wheel_dir(self, proposal: Any) -> str | None:
        value = proposal["value"]
        return None if value is None else validate_abs_path(value, "wheel_dir")

    @validate("idle_stop_minutes")
    def _check_idle_minutes(self, proposal: Any) -> float:
        return float(validate_idle_stop_minutes(proposal["value"]))

    @validate("before_stop")
    def _check_before_stop(self, proposal: Any) -> str:
        _params.validate_before_stop(proposal["value"])
        return proposal["value"]

    @validate("idle_stop_command")
    def _check_stop_command(self, proposal: Any) -> str:
        validate_stop_command(proposal["value"])
        return proposal["value"]

    @validate("ssh_config_file")
    def _check_ssh_config(self, proposal: Any) -> str | None:
        value = proposal["value"]
        if value is None or value == "":
            return None
        if "\0" in value or "\n" in value:
            raise ValidationError("ssh_config_file", "ssh_config_file must be a file path.")
        return os.path.expanduser(value)

    @validate("connect_timeout", "script_timeout", "ready_timeout", "before_stop_timeout")
    def _check_timeouts(self, proposal: Any) -> float:
        return float(validate_seconds(proposal["value"], proposal["trait"].name, minimum=0.1))

    @validate("remote_port")
    def _check_port(self, proposal: Any) -> int:
        return validate_port(proposal["value"])

    @validate("password_hash")
    def _check_password_hash(self, proposal: Any) -> str | None:
        return validate_password_hash(proposal["value"])

    @validate("kernel_cull_idle_seconds")
    def _check_cull(self, proposal: Any) -> float:
        return float(validate_seconds(proposal["value"], "kernel_cull_idle_seconds"))

    @validate("base_python")
    def _check_base_python(self, proposal: Any) -> str:
        return _params.validate_program(proposal["value"], "base_python")

    @validate("package_index_url")
    def _check_index_url(self, proposal: Any) -> str:
        return _params.validate_index_url(proposal["value"])

    @validate("cloud_init_timeout", "apt_timeout")
    def _check_wait(self, proposal: Any) -> float:
        return float(validate_seconds(proposal["value"], proposal["trait"].name, minimum=1))

    @validate("sysfs_root")
    def _check_sysfs_root(self, proposal: Any) -> str:
        return validate_abs_path(proposal["value"], "sysfs_root")

    @validate("apt_root")
    def _check_apt_root(self, proposal: Any) -> str:
        value = proposal["value"]
        return "/" if value == "/" else validate_abs_path(value, "apt_root")

    @validate("log_tail_lines")
    def _check_tail(self, proposal: Any) -> int:
        value = proposal["value"]
        if not 1 <= value <= 1000:
            raise ValidationError("log_tail_lines", "log_tail_lines must be from 1 to 1000.")
        return value

    # -- public API -------------------------------------------------------------------------------

    def build_params(
        self,
        target: SSHTarget,
        instance_id: str,
        base_url: str,
        *,
        token: str,
        environment: Mapping[str, Any] | None = None,
        idle_stop_minutes: float | None = None,
        remote_port: int | None = None,
        fast: bool = False,
        image_source: str | None = None,
    ) -> dict[str, Any]:
        """The validated parameter file for ``setup.sh`` (raises ValidationError, runs nothing)."""
        if not isinstance(target, SSHTarget):
            raise ValidationError("target", "target must be an SSHTarget.")
        return _params.build_params(
            instance_id=instance_id,
            base_url=base_url,
            token=token,
            authorized_keys=[target.client_key.public_openssh],
            login_user=self.login_user,
            notebook_user=self.notebook_user,
            allow_root_notebook_user=self.allow_root_notebook_user,
            notebook_user_sudo=self.notebook_user_sudo,
            environment=self.environment if environment is None else environment,
            wheel_dir=self.wheel_dir,
            port=self.remote_port if remote_port is None else remote_port,
            password_hash=self.password_hash,
            tls=self.tls,
            idle_stop_minutes=(
                self.idle_stop_minutes if idle_stop_minutes is None else idle_stop_minutes
            ),
            idle_stop_command=self.idle_stop_command,
            kernel_cull_idle_seconds=self.kernel_cull_idle_seconds,
            ready_timeout=self.ready_timeout,
            fast=fast,
            base_python=self.base_python,
            index_url=self.package_index_url,
            cloud_init_timeout=self.cloud_init_timeout,
            apt_root=self.apt_root,
            sysfs_root=self.sysfs_root,
            apt_timeout=self.apt_timeout,
            rotate_host_key=self._should_rotate(instance_id),
            sshd_host_key_file=self.sshd_host_key_file,
            sshd_pid_file=self.sshd_pid_file,
            before_stop=self.before_stop,
            before_stop_timeout=self.before_stop_timeout,
            image_source=image_source,
        )

    def _should_rotate(self, instance_id: str) -> bool:
        if not self.rotate_host_key:
            return False
        if self.store is None:
            self.log.warning("jupyter-ec2: no state store, so the host key is not rotated")
            return False
        return not self.store.host_key_rotated(instance_id)

    def connect(
        self,
        target: SSHTarget,
        *,
        facts: ConnectFacts | Callable[[], ConnectFacts | None] | None = None,
        timeout: float | None = None,
        on_retry: Callable[[ConnectFailure], None] | None = None,
    ) -> SSHConnection:
        """An SSH session to ``target`` with its pinned host key (see :func:`.ssh.connect`)."""
        return connect(
            target,
            ssh_config_file=self.ssh_config_file,
            default_user=self.login_user,
            timeout=self.connect_timeout if timeout is None else timeout,
            facts=facts,
            on_retry=on_retry,
        )

    def provision(
        self,
        target: SSHTarget,
        instance_id: str,
        base_url: str,
        on_progress: ProgressCallback | None = None,
        *,
        token: str | None = None,
        environment: Mapping[str, Any] | None = None,
        idle_stop_minutes: float | None = None,
        remote_port: int | None = None,
        facts: ConnectFacts | Callable[[], ConnectFacts | None] | None = None,
        fast: bool = False,
        image_source: str | None = None,
    ) -> ProvisionResult:
        """Provision ``instance_id`` at ``target``; safe to repeat (unchanged steps say so).

        ``token`` is the remote server's token from an earlier run (a new one is made when
        None, which rewrites the config); ``environment`` and ``idle_stop_minutes`` override
        the configured ones (a launch profile's values), ``remote_port`` the configured port
        (None: the trait; 0: a free port, the same one as last time when it is still free).
        ``image_source`` is the instance a saved image of this disk was taken of: its
        environment is reused and its services retired. ``on_progress(step, percent, text)``
        receives every step and output line.

        Raises ValidationError before connecting, HostKeyMismatchError / SSHConnectError when
        no trusted session comes up, and ProvisionError naming the failed step.
        """
        token = new_token() if token is None else validate_token(token)
        parameters = self.build_params(
            target,
            instance_id,
            base_url,
            token=token,
            environment=environment,
            idle_stop_minutes=idle_stop_minutes,
            remote_port=remote_port,
            fast=fast,
            image_source=image_source,
        )
        payload = _params.params_json(parameters)
        script, watchdog = _resource("setup.sh"), _resource("watchdog.py")
        output = _ScriptOutput(on_progress, [token], self.log_tail_lines)

        output.step, output.percent = "connect", 1
        output.progress(STEP_LABELS["connect"] + "…")

        def retrying(failure: ConnectFailure) -> None:
            output.progress(f"SSH is not reachable yet ({failure.detail}); trying again")

        conn, target = self._connect_current(target, instance_id, facts, retrying)
        # Connecting may have finished a rotation cut short: decide now whether one is due.
        rotate = self._should_rotate(instance_id)
        if rotate != parameters["host_key"]["rotate"]:
            parameters = dict(parameters, host_key={**parameters["host_key"], "rotate": rotate})
            payload = _params.params_json(parameters)
        if rotate:
            output.answers["host_key_next"] = functools.partial(
                self._pin_coming_key, instance_id, target.host_public_key
            )
        with conn:
            output.step, output.percent = "upload", 3
            output.progress(STEP_LABELS["upload"] + "…")
            files = {"setup.sh": script, "watchdog.py": watchdog, "params.json": payload}
            files["before_stop.py"] = _resource("before_stop.py")
            result = self._run_script(conn, instance_id, files, output)
        if "host_key" in output.results:
            output.step = "host-key"
            target = self._finish_rotation(target, instance_id, output.results["host_key"])

        if result.exit_status != 0 or not output.ended:
            step = output.failed_step or output.step
            if step == "start":
                step = "upload"  # sudo or the shell refused before the first step
            raise ProvisionError(
                step,
                f"Provisioning failed at step '{step}': {output.reason()}",
                tuple(output.tail),
            )
        port_text = output.results.get("port", "")
        if not port_text.isdigit():
            raise ProvisionError("ready", "The setup script did not report the server's port.")
        output.step, output.percent = "ready", 100
        output.progress("Jupyter is ready")
        return ProvisionResult(
            port=int(port_text),
            token=token,
            base_url=remote_base_url(base_url, instance_id),
            tls_fingerprint=output.results.get("tls_fingerprint") or None,
            steps=tuple(output.steps),
            changed_steps=tuple(output.changed),
            log_lines=tuple(output.lines),
            host_public_key=" ".join(target.host_public_key.split()[:2]),
        )

    # -- host key rotation ----------------------------------------------------------------------

    def _connect_current(
        self,
        target: SSHTarget,
        instance_id: str,
        facts: Any,
        on_retry: Callable[[ConnectFailure], None] | None,
    ) -> tuple[SSHConnection, SSHTarget]:
        """A session with the key pinned now; a rotation cut short is finished on the way.

        When the instance refuses the pinned key but proves the key a begun rotation pinned as
        coming (the crash came between the switch and the finish), that key becomes the pin.
        """
        store = self.store
        if store is not None:
            pinned = store.pinned_host_key(instance_id)
            if pinned and pinned != " ".join(target.host_public_key.split()[:2]):
                target = dataclasses.replace(target, host_public_key=pinned)
        try:
            return self.connect(target, facts=facts, on_retry=on_retry), target
        except HostKeyMismatchError:
            coming = store.pending_host_key(instance_id) if store is not None else None
            if coming is None:
                raise
            target = dataclasses.replace(target, host_public_key=coming)
            conn = self.connect(target, facts=facts, on_retry=on_retry)
            store.finish_host_key_rotation(instance_id, coming)
            self.log.info("jupyter-ec2: %s: finished a host key rotation cut short", instance_id)
            return conn, target

    def _pin_coming_key(self, instance_id: str, current: str, line: str) -> str:
        """The script made a new host key: pin it as coming, then let the script switch."""
        assert self.store is not None
        self.store.begin_host_key_rotation(instance_id, current, line)
        return "pinned\n"

    def _finish_rotation(self, old: SSHTarget, instance_id: str, line: str) -> SSHTarget:
        """Verify the instance now proves the new key and refuses the old; pin the new one."""
        assert self.store is not None
        new = dataclasses.replace(old, host_public_key=" ".join(line.split()[:2]))
        deadline = time.monotonic() + 15
        while True:  # sshd re-reads its keys on SIGHUP: a moment may pass
            try:
                with self.connect(new, timeout=15):
                    break
            except HostKeyMismatchError:
                if time.monotonic() > deadline:
                    raise ProvisionError(
                        "host-key",
                        "The instance made a new host key but its sshd still answers with the "
                        "old one; check sshd_host_key_file and sshd_pid_file.",
                    ) from None
                time.sleep(0.2)
        try:
            with self.connect(old, timeout=15):
                pass
        except HostKeyMismatchError:
            pass  # what we want: the handed-over key no longer authenticates the instance
        else:
            raise ProvisionError(
                "host-key",
                "The instance answers with the new host key, but the handed-over one still "
                "authenticates it: its sshd has another HostKey file with that key.",
            )
        self.store.finish_host_key_rotation(instance_id, new.host_public_key)
        return new

    def _run_script(
        self,
        conn: SSHConnection,
        instance_id: str,
        files: Mapping[str, bytes],
        output: _ScriptOutput,
    ) -> CommandResult:
        """Upload ``files`` to a private staging directory, run ``setup.sh``, clean up."""
        stage = f"/tmp/jupyter-ec2-{instance_id}-{secrets.token_hex(6)}"
        script = shlex.quote(f"{stage}/setup.sh")
        parameters = shlex.quote(f"{stage}/params.json")
        command = (
            f'if [ "$(id -u)" = 0 ]; then exec /bin/bash {script} {parameters}; '
            f"elif sudo -n true 2>/dev/null; then exec sudo -n /bin/bash {script} {parameters}; "
            # No root and no sudo: the script runs in user mode if the login user is the
            # notebook user, and says what is missing otherwise.
            f"else exec /bin/bash {script} {parameters}; fi"
        )
        try:
            sftp = conn.open_sftp()
        except _TRANSPORT_ERRORS as err:
            raise ProvisionError("upload", f"Could not open SFTP on the instance: {err}") from None
        try:
            try:
                sftp.mkdir(stage, 0o700)  # fails if it exists: nobody else's directory is used
                for name, data in files.items():
                    sftp.putfo(io.BytesIO(data), f"{stage}/{name}", confirm=True)
                    sftp.chmod(f"{stage}/{name}", 0o600)
            except _TRANSPORT_ERRORS as err:
                raise ProvisionError("upload", f"Could not upload the setup files: {err}") from None
            try:
                return conn.run(command, on_line=output.feed, timeout=self.script_timeout)
            except SSHError as err:
                raise ProvisionError(
                    output.step,
                    f"Provisioning stopped at step '{output.step}': {err.message}",
                    tuple(output.tail),
                ) from None
        finally:
            for name in files:
                with contextlib.suppress(*_TRANSPORT_ERRORS):
                    sftp.remove(f"{stage}/{name}")
            with contextlib.suppress(*_TRANSPORT_ERRORS):
                sftp.rmdir(stage)
            with contextlib.suppress(*_TRANSPORT_ERRORS):
                sftp.close()

    def ensure_running(
        self,
        target: SSHTarget,
        instance_id: str,
        base_url: str,
        token: str,
        on_progress: ProgressCallback | None = None,
        *,
        environment: Mapping[str, Any] | None = None,
        idle_stop_minutes: float | None = None,
        remote_port: int | None = None,
        facts: ConnectFacts | Callable[[], ConnectFacts | None] | None = None,
    ) -> ProvisionResult:
        """The fast re-run after a start: same steps, skipping cloud-init and slow checks.

        Starts the server and the watchdog when they are not running (after a stop/start
        nothing else may have started them); changes nothing else when nothing else changed.
        """
        return self.provision(
            target,
            instance_id,
            base_url,
            on_progress,
            token=token,
            environment=environment,
            idle_stop_minutes=idle_stop_minutes,
            remote_port=remote_port,
            facts=facts,
            fast=True,
        )

    def setup_dask(
        self,
        target: SSHTarget,
        params: Mapping[str, Any],
        on_progress: ProgressCallback | None = None,
    ) -> Any:
        """Run Dask's scheduler or worker as a service (``dask.sh``, see :mod:`.dask`)."""
        from .dask import run_dask_setup

        return run_dask_setup(self, target, params, on_progress)

    def keep_alive(
        self,
        target: SSHTarget,
        instance_id: str,
        minutes: int,
        *,
        facts: ConnectFacts | Callable[[], ConnectFacts | None] | None = None,
        timeout: float = 30.0,
    ) -> float:
        """Tell the instance's watchdog not to stop it for ``minutes`` from now (its own clock).

        Writes ``keepalive.json`` beside the watchdog's status file, as root (through ``sudo``
        when the login user is not root), atomically; returns the ``until`` written.
        """
        paths = remote_paths(validate_instance_id(instance_id))
        seconds = int(minutes) * 60
        path = posixpath.join(posixpath.dirname(paths.status_file), "keepalive.json")
        tmp = path + ".tmp"
        script = (
            f"test -d {shlex.quote(paths.state_dir)} || {{ echo 'not provisioned'; exit 3; }}; "
            f"until=$(( $(date +%s) + {seconds} )); umask 022; "
            f'printf \'{{"until": %s}}\\n\' "$until" > {shlex.quote(tmp)} && '
            f'mv -f {shlex.quote(tmp)} {shlex.quote(path)} && echo "$until"'
        )
        command = (
            'if [ "$(id -u)" = 0 ]; then exec /bin/sh -c "$0"; '
            'else exec sudo -n /bin/sh -c "$0"; fi'
        )
        with self.connect(target, facts=facts, timeout=timeout) as conn:
            result = conn.run(f"/bin/sh -c {shlex.quote(command)} {shlex.quote(script)}",
                              timeout=timeout)  # fmt: skip
        output = [line for line in result.lines if line.strip()]
        if result.exit_status != 0 or not output or not output[-1].strip().isdigit():
            raise SSHError(
                "Could not write the keepalive on the instance: "
                + (" ".join(output)[-200:] or f"exit status {result.exit_status}")
            )
        return float(output[-1].strip())

    def run_before_stop(self, target: SSHTarget, instance_id: str) -> dict[str, Any]:
        """Run the instance's before-stop step (``before_stop``) over SSH; its outcome
        ``{"ok", "detail", …}`` (SSHError only when no session comes up)."""
        return run_on_instance(self, target, validate_instance_id(instance_id))

    def read_idle_status(
        self,
        target: SSHTarget,
        instance_id: str,
        *,
        facts: ConnectFacts | Callable[[], ConnectFacts | None] | None = None,
        timeout: float = 30.0,
    ) -> IdleStatus | None:
        """The watchdog's last report, or None when the instance has none (auto-stop off or
        not provisioned)."""
        instance_id = validate_instance_id(instance_id)
        # Where root keeps it, else where a provisioning without root did (relative: the home).
        paths = (remote_paths(instance_id).status_file, user_mode_status_file(instance_id))
        with self.connect(target, facts=facts, timeout=timeout) as conn:
            sftp = conn.open_sftp()
            try:
                data = None
                for path in paths:
                    with contextlib.suppress(FileNotFoundError), sftp.open(path, "r") as f:
                        data = f.read(64 * 1024)
                        break
                if data is None:
                    return None
            except OSError as err:
                raise SSHError(f"Could not read the idle status: {err}") from None
            finally:
                sftp.close()
        read_at = time.time()
        try:
            parsed = json.loads(data)
        except ValueError:
            return None
        return IdleStatus.from_json(parsed, read_at) if isinstance(parsed, dict) else None


__all__ = [
    "STEP_LABELS",
    "SCRIPT_STEPS",
    "ConnectFacts",
    "ConnectFailure",
    "IdleStatus",
    "ProgressCallback",
    "ProvisionError",
    "ProvisionResult",
    "Provisioner",
    "SSHConnectError",
    "SSHConnection",
    "SSHTarget",
    "diagnose",
    "new_token",
    "remote_paths",
]
