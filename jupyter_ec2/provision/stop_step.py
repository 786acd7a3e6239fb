"""The before-stop step run over SSH: the command that finds it on the instance, its outcome.

Provisioning installs ``before_stop.py`` and a ``before-stop`` wrapper in the instance's state
directory (``setup.sh``, ``install_before_stop``); :meth:`Provisioner.run_before_stop` runs the
wrapper through :func:`run_on_instance` before the extension stops or terminates an instance.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

from ..models import validate_instance_id
from .params import REMOTE_STATE_ROOT, USER_MODE_STATE_ROOT

if TYPE_CHECKING:
    from . import Provisioner
    from .ssh import SSHTarget

#: Seconds allowed on top of ``before_stop_timeout`` for the SSH connection and the runner.
SSH_MARGIN = 30.0


def remote_command(instance_id: str) -> str:
    """The shell command that runs the instance's before-stop wrapper, as root when it can."""
    instance_id = validate_instance_id(instance_id)
    rooted = shlex.quote(f"{REMOTE_STATE_ROOT}/{instance_id}/before-stop")
    user_mode = shlex.quote(f"{USER_MODE_STATE_ROOT}/{instance_id}/before-stop")
    return (
        f'w={rooted}; [ -x "$w" ] || w="$HOME"/{user_mode}; '
        '[ -x "$w" ] || { echo "the before-stop step is not set up on this instance"; exit 3; }; '
        'if [ "$(id -u)" = 0 ] || [ -O "$w" ]; then exec "$w"; else exec sudo -n "$w"; fi'
    )


def parse_outcome(lines: list[str], exit_status: int) -> dict[str, Any]:
    """The runner's JSON outcome line, or a failed outcome saying what came back instead."""
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                outcome = json.loads(line)
            except ValueError:
                break
            if isinstance(outcome, dict) and "ok" in outcome:
                return outcome
            break
    text = " ".join(line.strip() for line in lines if line.strip())[-300:]
    return {"ok": False, "detail": text or f"exit status {exit_status}"}


def run_on_instance(provisioner: Provisioner, target: SSHTarget, instance_id: str) -> dict:
    """Run the before-stop step on the instance over SSH (blocking); its outcome, never raising
    for what happens on the instance (SSHError only when no session comes up)."""
    timeout = float(provisioner.before_stop_timeout) + SSH_MARGIN
    with provisioner.connect(target, timeout=min(timeout, 30.0)) as conn:
        result = conn.run(remote_command(instance_id), timeout=timeout)
    return parse_outcome(list(result.lines), result.exit_status)


__all__ = ["SSH_MARGIN", "parse_outcome", "remote_command", "run_on_instance"]
