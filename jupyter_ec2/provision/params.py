"""Pure builders of what provisioning sends to an instance, and the checks of every input.

Nothing here does I/O. :func:`build_params` validates every value that will reach the instance
(user names, package specs, paths, URLs, the idle stop command, the password hash, the token)
and raises :class:`~jupyter_ec2.errors.ValidationError` naming the bad field *before* anything
connects or runs. It returns the JSON parameter file that ``setup.sh`` reads as data, never as
shell text; :func:`build_jupyter_config` is the remote Jupyter server's config inside it.

Everything provisioning puts on a host lives under a per-instance path or name
(:func:`remote_paths`), so several instances can share one host.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationError
from ..keys import public_key_blob
from ..models import (
    INSTANCE_ID_PATTERN,
    validate_environment,
    validate_idle_stop_minutes,
    validate_package_spec,
)

#: The version of the parameter file; ``setup.sh`` refuses any other.
PARAMS_VERSION = 1

#: Where provisioning keeps an instance's files on the host (one directory per instance id).
REMOTE_STATE_ROOT = "/var/lib/jupyter-ec2"

#: Where provisioning without root (user mode: the notebook user itself, no sudo) keeps an
#: instance's files, relative to that user's home (SFTP paths are relative to it too).
USER_MODE_STATE_ROOT = ".local/state/jupyter-ec2"

#: The prefix of the service (systemd unit) names; the instance id follows.
SERVICE_PREFIX = "jupyter-ec2-"

#: The path under the local server's base_url where the remote notebook is served.
REMOTE_PATH = "jupyter-ec2/remote/{instance_id}/"

#: Limits that keep a parameter file small and every value bounded.
MAX_PARAMS_BYTES = 256 * 1024
WEBSOCKET_MAX_MESSAGE_SIZE = 1024 * 1024 * 1024
MAX_COMMAND_CHARS = 1000
#: The ``before_stop`` value that saves every open notebook (see provision/before_stop.py).
SAVE_NOTEBOOKS = "save-notebooks"
#: What ``save-notebooks`` needs in a pip or conda environment (the shared documents).
COLLABORATION_PACKAGE = "jupyter-collaboration"
MAX_BASE_URL_CHARS = 300
MAX_PATH_CHARS = 255
MAX_AUTHORIZED_KEYS = 10
MAX_PUBLIC_KEY_CHARS = 16 * 1024
MAX_TIMEOUT_SECONDS = 24 * 3600
MIN_TOKEN_CHARS = 43  # 32 random bytes in URL-safe base64; 64 in hex

_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_INSTANCE_ID = re.compile(rf"{INSTANCE_ID_PATTERN}\Z", re.ASCII)
_BASE_URL = re.compile(r"^/(?:[A-Za-z0-9._~%!$&'()*+,;=:@-]+/)*$")
_ABS_PATH = re.compile(r"^/[A-Za-z0-9._+/-]{1,254}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_COMMAND_WORD = re.compile(r"^[A-Za-z0-9._+/-]+$")
_PROGRAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_INDEX_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?::\d{1,5})?/(?:[A-Za-z0-9._~%+-]+/)*$")

#: The package index the pip kind fetches pip from when python3 has no ensurepip.
DEFAULT_INDEX_URL = "https://pypi.org/simple/"
_ARGON2 = re.compile(
    r"^argon2:\$argon2(?:id|i|d)\$v=\d{1,3}\$m=\d{1,10},t=\d{1,10},p=\d{1,4}"
    r"\$[A-Za-z0-9+/]{8,128}={0,2}\$[A-Za-z0-9+/]{16,256}={0,2}$"
)
_PUBLIC_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
# conda takes a narrower spec language than pip: a name and version constraints only.
_CONDA_OPERATORS = ("==", ">=", "<=", "!=", ">", "<")


# -- names and paths on the host ----------------------------------------------------------------


@dataclass(frozen=True)
class RemotePaths:
    """Where provisioning keeps one instance's files and services on the host."""

    state_dir: str
    config_file: str
    run_dir: str
    server_log: str
    supervisor_pid: str
    server_pid: str
    status_file: str
    watchdog_settings: str
    watchdog_pid: str
    tls_cert: str
    tls_key: str
    service_name: str
    watchdog_service_name: str


def remote_paths(instance_id: str) -> RemotePaths:
    """The per-instance paths and service names of ``instance_id`` (validated)."""
    instance_id = validate_instance_id(instance_id)
    state = f"{REMOTE_STATE_ROOT}/{instance_id}"
    run = f"{state}/run"
    return RemotePaths(
        state_dir=state,
        config_file=f"{state}/jupyter_server_config.json",
        run_dir=run,
        server_log=f"{run}/server.log",
        supervisor_pid=f"{state}/supervisor.pid",
        server_pid=f"{run}/server.pid",
        status_file=f"{state}/idle-status.json",
        watchdog_settings=f"{state}/watchdog.json",
        watchdog_pid=f"{state}/watchdog.pid",
        tls_cert=f"{state}/tls/cert.pem",
        tls_key=f"{state}/tls/key.pem",
        service_name=f"{SERVICE_PREFIX}{instance_id}",
        watchdog_service_name=f"{SERVICE_PREFIX}{instance_id}-watchdog",
    )


def user_mode_status_file(instance_id: str) -> str:
    """The idle status file of ``instance_id`` when provisioned without root (home-relative)."""
    return f"{USER_MODE_STATE_ROOT}/{validate_instance_id(instance_id)}/idle-status.json"


def remote_base_url(base_url: str, instance_id: str) -> str:
    """The remote server's base_url: the local base_url + ``jupyter-ec2/remote/{id}/``."""
    base_url = validate_base_url(base_url)
    return base_url + REMOTE_PATH.format(instance_id=validate_instance_id(instance_id))


def new_token() -> str:
    """A new random token for the remote server: 32 bytes from :mod:`secrets`, 64 hex digits."""
    return secrets.token_hex(32)


# -- validators ---------------------------------------------------------------------------------


def _string(value: Any, field: str, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"{field} must be {what}, not {type(value).__name__}.")
    if len(value) > max_chars:
        raise ValidationError(
            field, f"{field} is too long ({len(value)} > {max_chars} characters)."
        )
    return value


def validate_user_name(
    value: Any, field: str = "notebook_user", *, allow_root: bool = False
) -> str:
    """A POSIX user name (``^[a-z_][a-z0-9_-]{0,31}$``); ``root`` only when allowed."""
    value = _string(value, field, "a user name", 32)
    if not _USER_NAME.match(value):
        raise ValidationError(
            field,
            f"{field} {value!r:.40} is not a user name: use 1–32 lower-case letters, digits, "
            "'_' or '-', starting with a letter or '_'.",
        )
    if value == "root" and not allow_root:
        raise ValidationError(field, f"{field} must not be root (Jupyter runs as a plain user).")
    return value


def validate_instance_id(value: Any, field: str = "instance_id") -> str:
    """An EC2 instance id (``i-`` and 8 or 17 hex digits)."""
    value = _string(value, field, "an instance id", 19)
    if not _INSTANCE_ID.match(value):
        raise ValidationError(
            field, f"{field} {value!r:.40} is not an instance id such as i-0abc…."
        )
    return value


def validate_base_url(value: Any, field: str = "base_url") -> str:
    """A URL path that starts and ends with ``/`` and holds only URL-safe characters."""
    value = _string(value, field, "a URL path", MAX_BASE_URL_CHARS)
    if not _BASE_URL.match(value) or "/../" in value or "/./" in value:
        raise ValidationError(
            field, f"{field} {value!r:.60} must be a URL path such as '/' or '/user/alice/'."
        )
    return value


def validate_port(value: Any, field: str = "remote_port") -> int:
    """A TCP port, or 0 for "pick a free one"."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValidationError(field, f"{field} must be a port number (1–65535) or 0 for any.")
    return value


def validate_abs_path(value: Any, field: str) -> str:
    """An absolute path of plain characters (letters, digits, ``._+-/``), no ``..`` parts."""
    value = _string(value, field, "an absolute path", MAX_PATH_CHARS)
    parts = value.split("/")[1:]
    if not _ABS_PATH.match(value) or any(p in ("", ".", "..") for p in parts):
        raise ValidationError(
            field, f"{field} must be an absolute path of letters, digits and ._+-/ only."
        )
    return value


def validate_stop_command(value: Any, field: str = "idle_stop_command") -> list[str]:
    """The idle stop command as a word list (split like a shell would, but never run by one)."""
    value = _string(value, field, "a command line", MAX_COMMAND_CHARS)
    if not value.strip() or not value.isprintable():
        raise ValidationError(field, f"{field} must be one line of printable characters.")
    try:
        argv = shlex.split(value)
    except ValueError as err:
        raise ValidationError(field, f"{field} cannot be split into words: {err}.") from None
    if not argv or not _COMMAND_WORD.match(argv[0]):
        raise ValidationError(
            field, f"{field} must start with a program name or absolute path, not {value!r:.40}."
        )
    return argv


def validate_before_stop(value: Any, field: str = "before_stop") -> dict[str, str]:
    """``before_stop``: ``save-notebooks``, ``""`` (nothing) or one shell command line."""
    value = _string(value, field, "a command line", MAX_COMMAND_CHARS).strip()
    if value in ("", SAVE_NOTEBOOKS):
        return {"action": value or "nothing", "command": ""}
    if not value.isprintable():
        raise ValidationError(field, f"{field} must be one line of printable characters.")
    return {"action": "command", "command": value}


def validate_password_hash(value: Any, field: str = "password_hash") -> str | None:
    """An argon2 hash from ``jupyter_server.auth.passwd`` (or None); SHA-1 hashes are refused."""
    if value is None or value == "":
        return None
    value = _string(value, field, "a password hash", 512)
    if value.startswith("sha1:"):
        raise ValidationError(
            field,
            f"{field} is a SHA-1 hash, which is too weak: make an argon2 one with "
            "jupyter_server.auth.passwd().",
        )
    if not _ARGON2.match(value):
        raise ValidationError(
            field,
            f"{field} must be an argon2 hash ('argon2:$argon2id$…') made by "
            "jupyter_server.auth.passwd().",
        )
    return value


def validate_token(value: Any, field: str = "token") -> str:
    """A remote server token: at least 43 URL-safe characters (32 random bytes)."""
    value = _string(value, field, "a token", 256)
    if len(value) < MIN_TOKEN_CHARS or not _TOKEN.match(value):
        raise ValidationError(
            field, f"{field} must be at least {MIN_TOKEN_CHARS} letters, digits, '-' or '_'."
        )
    return value


def validate_public_key(value: Any, field: str = "authorized_keys") -> str:
    """One OpenSSH public key line; returned as ``type base64 [comment]`` on one line."""
    value = _string(value, field, "an OpenSSH public key line", MAX_PUBLIC_KEY_CHARS).strip()
    if not value.isprintable():
        raise ValidationError(field, f"{field} must be one line of printable characters.")
    try:
        key_type, blob = public_key_blob(value)
    except ValidationError:
        raise ValidationError(field, f"{field} is not an OpenSSH public key line.") from None
    if key_type not in _PUBLIC_KEY_TYPES or not blob:
        raise ValidationError(field, f"{field}: key type {key_type!r:.40} is not supported.")
    parts = value.split(None, 2)
    comment = parts[2] if len(parts) > 2 else ""
    if comment and not re.match(r"^[A-Za-z0-9._@+=:,/ -]{1,200}$", comment):
        comment = ""  # an odd comment is dropped rather than sent
    return " ".join([key_type, parts[1]] + ([comment] if comment else []))


def validate_program(value: Any, field: str) -> str:
    """A program: an absolute path, or a plain name looked up on the host's standard PATH."""
    value = _string(value, field, "a program name or absolute path", MAX_PATH_CHARS)
    if value.startswith("/"):
        return validate_abs_path(value, field)
    if not _PROGRAM_NAME.match(value):
        raise ValidationError(field, f"{field} must be a program name or an absolute path.")
    return value


def validate_index_url(value: Any, field: str = "package_index_url") -> str:
    """A package index (PEP 503/691 simple API) URL: http(s), a host, a path ending in ``/``."""
    value = _string(value, field, "a URL", 500)
    if not _INDEX_URL.match(value):
        raise ValidationError(
            field, f"{field} must be an index URL such as {DEFAULT_INDEX_URL!r} (ending in '/')."
        )
    return value


def validate_seconds(value: Any, field: str, *, minimum: float = 0) -> float:
    """A duration in seconds, finite, from ``minimum`` to a day."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(field, f"{field} must be a number of seconds.")
    if not minimum <= value <= MAX_TIMEOUT_SECONDS:
        raise ValidationError(field, f"{field} must be from {minimum} to {MAX_TIMEOUT_SECONDS} s.")
    return value


def validate_conda_spec(spec: str, field: str = "environment.packages") -> str:
    """A package spec conda understands: a name and version constraints, nothing else."""
    from packaging.requirements import Requirement

    req = Requirement(validate_package_spec(spec, field))
    if req.extras or req.marker is not None or req.url is not None:
        raise ValidationError(
            field, f"{spec!r:.60}: conda packages take no extras, markers or URLs."
        )
    for specifier in req.specifier:
        if specifier.operator not in _CONDA_OPERATORS:
            raise ValidationError(
                field, f"{spec!r:.60}: conda does not understand {specifier.operator!r}."
            )
    return req.name + ",".join(sorted(str(s) for s in req.specifier))


def _requirement_name(spec: str) -> str:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return canonicalize_name(Requirement(spec).name)


def normalize_environment(value: Any, field: str = "environment") -> dict[str, Any]:
    """The environment as provisioning installs it: validated, and with jupyterlab added.

    ``pip`` and ``conda`` environments always get ``jupyterlab`` (unless a spec for it is
    given); conda specs are restricted to names and version constraints.
    """
    try:
        env = validate_environment(value)
    except ValidationError as err:
        if field != "environment" and err.field and err.field.startswith("environment"):
            raise ValidationError(field + err.field[len("environment") :], err.message) from None
        raise
    kind = env["kind"]
    if kind in ("pip", "conda"):
        packages = list(env.get("packages", []))
        if kind == "conda":
            packages = [validate_conda_spec(p, f"{field}.packages") for p in packages]
        if "jupyterlab" not in {_requirement_name(p) for p in packages}:
            packages.append("jupyterlab")
        env["packages"] = packages
    if kind == "conda":
        env.setdefault("installer_url", "")
    return env


# -- builders -----------------------------------------------------------------------------------


def build_jupyter_config(
    *,
    instance_id: str,
    base_url: str,
    token: str,
    port: int = 0,
    notebook_user: str = "jupyter",
    password_hash: str | None = None,
    tls: bool = False,
    kernel_cull_idle_seconds: float = 0,
) -> dict[str, Any]:
    """The remote ``jupyter server`` config (JSON config file contents).

    Loopback only (``ip`` 127.0.0.1), the token, ``base_url`` = local base_url +
    ``jupyter-ec2/remote/{id}/``, ``root_dir`` ``~/notebooks`` (the script makes it absolute),
    no browser, ``allow_root`` only for a root notebook user, the argon2 password hash when
    given, kernel culling, and the TLS files when ``tls``. ``port`` 0 is filled in on the host.
    """
    paths = remote_paths(instance_id)
    server: dict[str, Any] = {
        "ip": "127.0.0.1",
        "port": validate_port(port),
        "port_retries": 0,
        "open_browser": False,
        "base_url": remote_base_url(base_url, instance_id),
        "root_dir": "~/notebooks",
        "allow_root": notebook_user == "root",
        "allow_remote_access": False,
        # As large as the local proxy relays (jupyter_ec2.proxy): a big output must not close
        # the kernel websocket at tornado's 10 MiB default.
        "tornado_settings": {"websocket_max_message_size": WEBSOCKET_MAX_MESSAGE_SIZE},
    }
    if tls:
        server["certfile"] = paths.tls_cert
        server["keyfile"] = paths.tls_key
    config: dict[str, Any] = {
        "ServerApp": server,
        "IdentityProvider": {"token": validate_token(token)},
    }
    password_hash = validate_password_hash(password_hash)
    if password_hash:
        config["PasswordIdentityProvider"] = {
            "hashed_password": password_hash,
            "password_required": False,
        }
    cull = validate_seconds(kernel_cull_idle_seconds, "kernel_cull_idle_seconds")
    config["MappingKernelManager"] = {
        "cull_idle_timeout": int(cull),
        "cull_interval": 60 if cull else 300,
        "cull_connected": False,
        "cull_busy": False,
    }
    return config


def build_params(
    *,
    instance_id: str,
    base_url: str,
    token: str,
    authorized_keys: Sequence[str],
    login_user: str = "ubuntu",
    notebook_user: str = "jupyter",
    allow_root_notebook_user: bool = False,
    notebook_user_sudo: bool = False,
    environment: Mapping[str, Any] | None = None,
    wheel_dir: str | None = None,
    port: int = 0,
    password_hash: str | None = None,
    tls: bool = False,
    idle_stop_minutes: float = 60,
    idle_stop_command: str = "sudo shutdown -h now",
    kernel_cull_idle_seconds: float = 0,
    ready_timeout: float = 120,
    fast: bool = False,
    base_python: str = "python3",
    index_url: str = DEFAULT_INDEX_URL,
    cloud_init_timeout: float = 900,
    apt_root: str = "/",
    apt_timeout: float = 600,
    sysfs_root: str = "/sys",
    rotate_host_key: bool = False,
    sshd_host_key_file: str = "/etc/ssh/ssh_host_ed25519_key",
    sshd_pid_file: str = "/run/sshd.pid",
    before_stop: str = SAVE_NOTEBOOKS,
    before_stop_timeout: float = 60,
    image_source: str | None = None,
) -> dict[str, Any]:
    """The parameter file of ``setup.sh``: every value validated, nothing to interpret.

    Raises :class:`ValidationError` naming the first bad field; nothing may run before this
    returns. ``fast`` skips the slow checks of a host provisioned before (the re-run after a
    start): the cloud-init wait and the environment's import check. ``image_source`` names the
    instance whose saved image this disk is a copy of (its environment is reused).
    """
    instance_id = validate_instance_id(instance_id)
    validate_user_name(login_user, "login_user", allow_root=True)
    notebook_user = validate_user_name(
        notebook_user, "notebook_user", allow_root=allow_root_notebook_user
    )
    if not isinstance(notebook_user_sudo, bool):
        raise ValidationError("notebook_user_sudo", "notebook_user_sudo must be true or false.")
    if not isinstance(tls, bool):
        raise ValidationError("tls", "tls must be true or false.")
    if not isinstance(authorized_keys, (list, tuple)) or not authorized_keys:
        raise ValidationError("authorized_keys", "At least one authorized key is needed.")
    if len(authorized_keys) > MAX_AUTHORIZED_KEYS:
        raise ValidationError("authorized_keys", f"At most {MAX_AUTHORIZED_KEYS} keys.")
    keys = [validate_public_key(k) for k in authorized_keys]
    env = normalize_environment(
        environment if environment is not None else {"kind": "pip", "packages": ["jupyterlab"]}
    )
    step = validate_before_stop(before_stop)
    step["timeout"] = validate_seconds(before_stop_timeout, "before_stop_timeout", minimum=1)
    wanted = step["action"] == SAVE_NOTEBOOKS and env["kind"] in ("pip", "conda")
    if wanted and COLLABORATION_PACKAGE not in {_requirement_name(p) for p in env["packages"]}:
        env["packages"].append(COLLABORATION_PACKAGE)
    if wheel_dir is not None:
        wheel_dir = validate_abs_path(wheel_dir, "wheel_dir")
    minutes = validate_idle_stop_minutes(idle_stop_minutes)
    argv = validate_stop_command(idle_stop_command)
    paths = remote_paths(instance_id)
    params: dict[str, Any] = {
        "version": PARAMS_VERSION,
        "instance_id": instance_id,
        "state_dir": paths.state_dir,
        "service_name": paths.service_name,
        "login_user": login_user,
        "notebook_user": notebook_user,
        "notebook_user_sudo": notebook_user_sudo,
        "authorized_keys": keys,
        "environment": env,
        "wheel_dir": wheel_dir or "",
        "port": validate_port(port),
        "tls": tls,
        "idle_stop_minutes": float(minutes),
        "idle_stop_command": argv,
        "before_stop": step,
        "ready_timeout": validate_seconds(ready_timeout, "ready_timeout", minimum=1),
        "fast": bool(fast),
        "image_source": (
            validate_instance_id(image_source, "image_source") if image_source else ""
        ),
        "base_python": validate_program(base_python, "base_python"),
        "index_url": validate_index_url(index_url),
        "cloud_init_timeout": validate_seconds(cloud_init_timeout, "cloud_init_timeout", minimum=1),
        "host_key": {
            "rotate": bool(rotate_host_key),
            "key_file": validate_abs_path(
                sshd_host_key_file.replace("{instance_id}", instance_id), "sshd_host_key_file"
            ),
            "sshd_pid_file": validate_abs_path(
                sshd_pid_file.replace("{instance_id}", instance_id), "sshd_pid_file"
            ),
        },
        "gpu": {"sysfs_root": validate_abs_path(sysfs_root, "sysfs_root")},
        "apt": {
            "root": "/" if apt_root == "/" else validate_abs_path(apt_root, "apt_root"),
            "timeout": validate_seconds(apt_timeout, "apt_timeout", minimum=1),
        },
        "jupyter_config": build_jupyter_config(
            instance_id=instance_id,
            base_url=base_url,
            token=token,
            port=port,
            notebook_user=notebook_user,
            password_hash=password_hash,
            tls=tls,
            kernel_cull_idle_seconds=kernel_cull_idle_seconds,
        ),
    }
    if len(params_json(params)) > MAX_PARAMS_BYTES:
        raise ValidationError("parameters", "The provisioning parameters are too large.")
    return params


def params_json(params: Mapping[str, Any]) -> bytes:
    """The parameter file's bytes (ASCII JSON, so no encoding can change a value)."""
    return json.dumps(params, sort_keys=True, ensure_ascii=True, indent=1).encode("ascii")


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """The parameters as ``setup.sh`` holds them: one string per dotted key.

    Dicts nest with ``.``; a list ``k`` gives ``k.#`` (its length) and ``k.0``, ``k.1``…;
    true/false become ``true``/``false``, None the empty string, numbers their JSON text.
    ``setup.sh --print-params`` prints exactly this mapping for a parameter file.
    """
    out: dict[str, str] = {}

    def walk(prefix: list[str], value: Any) -> None:
        if isinstance(value, Mapping):
            for key in sorted(value):
                walk([*prefix, str(key)], value[key])
        elif isinstance(value, (list, tuple)):
            out[".".join([*prefix, "#"])] = str(len(value))
            for index, item in enumerate(value):
                walk([*prefix, str(index)], item)
        elif value is True:
            out[".".join(prefix)] = "true"
        elif value is False:
            out[".".join(prefix)] = "false"
        elif value is None:
            out[".".join(prefix)] = ""
        elif isinstance(value, str):
            out[".".join(prefix)] = value
        else:
            out[".".join(prefix)] = json.dumps(value)

    walk([], params)
    return out
