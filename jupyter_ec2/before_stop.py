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

from typing import TYPE_CHECKING, Any

from .errors import EC2LauncherError
from .models import Phase

if TYPE_CHECKING:
    from .manager import LaunchManager
    from .reconcile import InstanceRecord

#: The phases in which the remote server may hold unsaved work (it is up, or was until now).
SERVING = (Phase.READY, Phase.DEGRADED, Phase.STARTING)


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
        outcome = await manager._thread(provisioner.run_before_stop, target, record.id)
    except EC2LauncherError as err:
        outcome = {"ok": False, "detail": err.message}
    except Exception as err:  # noqa: BLE001 - nothing here may keep the stop from happening
        manager.log.exception("jupyter-ec2: the before-stop step of %s failed", record.id)
        outcome = {"ok": False, "detail": f"unexpected error: {err}"}
    text = describe(outcome)
    manager._log(record, "before-stop", text)
    manager._emit("before_stop", record, step=action, text=text)


__all__ = ["describe", "run_before_stop"]
