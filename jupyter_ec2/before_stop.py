"""Work saved before any stop: the before-stop step run over SSH before Stop and Terminate.

``c.Provisioner.before_stop`` (``save-notebooks`` by default, a shell command, or ``""``) is set
up on the instance by provisioning (``provision/before_stop.py`` and a ``before-stop`` wrapper in
the instance's state directory). The idle watchdog runs it on the instance before an idle stop;
this module runs it before the manager asks EC2 to stop or terminate an instance. Its outcome
goes to the instance log. It is bounded (``before_stop_timeout`` on the instance, plus a margin
for SSH here), and whatever happens — a failure, a timeout, an unreachable instance — the stop
goes on.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

from .errors import EC2LauncherError
from .models import Phase, validate_instance_id
from .provision.params import REMOTE_STATE_ROOT, USER_MODE_STATE_ROOT

if TYPE_CHECKING:
    from .manager import LaunchManager
    from .provision import Provisioner, SSHTarget
    from .reconcile import InstanceRecord

#: Seconds allowed on top of ``before_stop_timeout`` for the SSH connection and the runner.
SSH_MARGIN = 30.0

#: The phases in which the remote server may hold unsaved work (it is up, or was until now).
SERVING = (Phase.READY, Phase.DEGRADED, Phase.STARTING)


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


def describe(outcome: dict[str, Any]) -> str:
    """One log line for people."""
    detail = str(outcome.get("detail") or "").strip()
    if outcome.get("ok"):
        return f"Before stop: {detail or 'done'}."
    return f"Before stop failed ({detail or 'no reason given'}); stopping anyway."


async def run_before_stop(
    manager: LaunchManager, record: InstanceRecord, action: str, was: Phase
) -> None:
    """The manager's hook before it asks EC2 to ``action`` (stop/terminate) an instance that
    was in phase ``was``."""
    provisioner = manager.provisioner
    if not provisioner.before_stop.strip() or not record.provisioned:
        return
    if was not in SERVING or record.ec2_state != "running":
        return
    manager._log(record, "before-stop", f"Running the before-stop step before {action}.")
    try:
        target = await manager._thread(manager._target, record)
        outcome = await manager._thread(run_on_instance, provisioner, target, record.id)
    except EC2LauncherError as err:
        outcome = {"ok": False, "detail": err.message}
    except Exception as err:  # noqa: BLE001 - nothing here may keep the stop from happening
        manager.log.exception("jupyter-ec2: the before-stop step of %s failed", record.id)
        outcome = {"ok": False, "detail": f"unexpected error: {err}"}
    text = describe(outcome)
    manager._log(record, "before-stop", text)
    manager._emit("before_stop", record, step=action, text=text)


__all__ = ["describe", "parse_outcome", "remote_command", "run_before_stop", "run_on_instance"]
