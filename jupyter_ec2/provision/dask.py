"""Dask on provisioned instances: Dask's own scheduler and worker CLI run as systemd services.

After ``setup.sh`` made a host a Jupyter host (user, environment, hardening), ``dask.sh`` adds
``distributed`` to the same environment and runs ``python -m dask scheduler`` (the notebook
instance) or ``python -m dask worker`` (a worker instance) as a service. The parameters are built
by the pure :func:`build_dask_params` and travel as a JSON file; nothing is built as shell.
"""

from __future__ import annotations

import io
import ipaddress
import json
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationError
from . import ProgressCallback, Provisioner, ProvisionError, _resource, _ScriptOutput
from .params import validate_instance_id, validate_port, validate_user_name
from .ssh import SSHTarget

#: The scheduler's port on the notebook instance's private address (Dask's default).
SCHEDULER_PORT = 8786
#: The dashboard's port on the notebook instance's loopback (Dask's default).
DASHBOARD_PORT = 8787

STEP_LABELS = {
    "dask-install": "Adding distributed to the environment",
    "dask-service": "Running Dask as a service",
    "dask-ready": "Checking that Dask answers",
}


@dataclass(frozen=True)
class DaskResult:
    """What ``dask.sh`` reported: the scheduler's address (scheduler role only)."""

    scheduler: str | None
    changed: tuple[str, ...]


def dashboard_prefix(remote_base_url: str) -> str:
    """The dashboard's path: ``dask`` under the remote notebook's proxy path (no trailing /)."""
    return remote_base_url.rstrip("/") + "/dask"


def validate_private_address(value: Any, field: str = "host") -> str:
    """A private IPv4 address of the VPC (where Dask binds; never a public one)."""
    try:
        address = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise ValidationError(field, f"{value!r:.40} is not an IPv4 address.") from None
    if not address.is_private or address.is_loopback:
        raise ValidationError(field, f"{address} is not a private VPC address.")
    return str(address)


def build_dask_params(
    *,
    role: str,
    instance_id: str,
    notebook_user: str,
    environment: Mapping[str, Any],
    host: str,
    scheduler_address: str | None = None,
    dashboard_path: str = "",
    jupyter_port: int | None = None,
    wheel_dir: str | None = None,
    nthreads: int = 0,
    ready_timeout: float = 120,
    scheduler_port: int = SCHEDULER_PORT,
    dashboard_port: int = DASHBOARD_PORT,
) -> dict[str, Any]:
    """The validated parameter file of ``dask.sh`` (pure)."""
    if role not in ("scheduler", "worker"):
        raise ValidationError("role", "role must be 'scheduler' or 'worker'.")
    kind = environment.get("kind")
    if kind not in ("pip", "conda", "existing"):
        raise ValidationError(
            "environment.kind", "environment.kind must be pip, conda or existing."
        )
    if role == "worker":
        if not scheduler_address or not scheduler_address.startswith("tcp://"):
            raise ValidationError(
                "scheduler_address", "A worker needs the scheduler's tcp:// address."
            )
        hostport = scheduler_address[len("tcp://") :]
        address, _, port = hostport.rpartition(":")
        validate_private_address(address, "scheduler_address")
        validate_port(int(port) if port.isdigit() else -1, "scheduler_address")
    if not isinstance(nthreads, int) or not 0 <= nthreads <= 1024:
        raise ValidationError("nthreads", "nthreads must be from 0 (one per core) to 1024.")
    return {
        "version": 1,
        "role": role,
        "instance_id": validate_instance_id(instance_id),
        "notebook_user": validate_user_name(notebook_user, "notebook_user"),
        "environment_kind": kind,
        "python": environment.get("python", "") if kind == "existing" else "",
        "wheel_dir": wheel_dir or "",
        "host": validate_private_address(host),
        "scheduler_port": validate_port(scheduler_port, "scheduler_port"),
        "dashboard_port": validate_port(dashboard_port, "dashboard_port"),
        "dashboard_prefix": dashboard_path,
        "scheduler_address": scheduler_address or "",
        "jupyter_service": f"jupyter-ec2-{instance_id}",
        "jupyter_port": jupyter_port or 0,
        "nthreads": nthreads,
        "ready_timeout": float(ready_timeout),
    }


def run_dask_setup(
    provisioner: Provisioner,
    target: SSHTarget,
    params: Mapping[str, Any],
    on_progress: ProgressCallback | None = None,
) -> DaskResult:
    """Upload and run ``dask.sh`` with ``params`` as root; raise ProvisionError naming the step."""
    payload = json.dumps(params, sort_keys=True).encode()
    output = _ScriptOutput(on_progress, [], provisioner.log_tail_lines)
    stage = f"/tmp/jupyter-ec2-{params['instance_id']}-dask-{secrets.token_hex(6)}"
    script, parameters = shlex.quote(f"{stage}/dask.sh"), shlex.quote(f"{stage}/params.json")
    command = (
        f'if [ "$(id -u)" = 0 ]; then /bin/bash {script} {parameters}; '
        f"else sudo -n /bin/bash {script} {parameters}; fi; status=$?; "
        f"rm -rf {shlex.quote(stage)}; exit $status"
    )
    with provisioner.connect(target) as conn:
        output.step = "upload"
        try:
            sftp = conn.open_sftp()
            try:
                sftp.mkdir(stage, 0o700)
                for name, data in (("dask.sh", _resource("dask.sh")), ("params.json", payload)):
                    sftp.putfo(io.BytesIO(data), f"{stage}/{name}", confirm=True)
                    sftp.chmod(f"{stage}/{name}", 0o600)
            finally:
                sftp.close()
        except OSError as err:
            raise ProvisionError("dask-upload", f"Could not upload dask.sh: {err}") from None
        result = conn.run(command, on_line=output.feed, timeout=provisioner.script_timeout)
    if result.exit_status != 0 or not output.ended:
        step = output.failed_step or output.step
        raise ProvisionError(step, f"Setting up Dask failed at '{step}': {output.reason()}",
                             tuple(output.tail))  # fmt: skip
    return DaskResult(output.results.get("scheduler"), tuple(output.changed))


__all__ = [
    "DASHBOARD_PORT",
    "SCHEDULER_PORT",
    "DaskResult",
    "build_dask_params",
    "dashboard_prefix",
    "run_dask_setup",
    "validate_private_address",
]
