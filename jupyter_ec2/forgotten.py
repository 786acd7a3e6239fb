"""Forgotten stopped instances: snapshotted, then terminated (``terminate_stopped_after_days``).

A stopped instance costs nothing for compute but keeps paying for its disk, and is easily
forgotten. With ``c.EC2Launcher.terminate_stopped_after_days`` set (0 = off), an instance stopped
that long has every EBS volume snapshotted (``CreateSnapshot``, each snapshot tagged as managed,
with its owner and source instance), and is terminated only once **every snapshot is
``completed``**: EBS snapshots are asynchronous, ``pending`` until their data is copied
(https://docs.aws.amazon.com/ebs/latest/userguide/ebs-creating-snapshot.html), and may end in
``error``. A snapshot that cannot be made or that fails leaves the instance **not terminated**;
the error is in the instance log and in its ``termination`` field, and it is tried again after
:data:`RETRY_SECONDS`.

When an instance was stopped comes from what the manager saw (each poll and phase change, kept
in the state store as ``forgotten``, so a restart keeps it) and from EC2's own stop time where
it gives one (``StateTransitionReason`` "User initiated (YYYY-MM-DD hh:mm:ss GMT)"); the earlier
of the two counts. Each stopped instance's ``terminates_at`` is published on the ``Instance``,
so JupyterLab warns a day before (:data:`WARNING_SECONDS`). The clock is the manager's
(``manager.clock``, epoch seconds), which tests replace by a simulated one.

The rules (:func:`terminates_at`, :func:`observe_stop`, :func:`next_step`) are pure; the
:class:`ForgottenInstances` sweeper carries them out, every AWS call in a worker thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .errors import EC2LauncherError
from .models import Phase

if TYPE_CHECKING:
    from .aws import SnapshotInfo
    from .manager import LaunchManager
    from .reconcile import InstanceRecord

DAY = 86400.0
#: JupyterLab warns this long before the termination (the front end reads ``terminates_at``).
WARNING_SECONDS = DAY
#: After a failed snapshot, the next attempt comes this much later.
RETRY_SECONDS = 3600.0
#: The store's name for the persisted state.
STORE_NAME = "forgotten"


# -- the rules (pure) ----------------------------------------------------------------------------


def terminates_at(stopped_since: float | None, days: float) -> float | None:
    """When a stopped instance is due (epoch seconds), or None (not stopped, or the rule off)."""
    if stopped_since is None or not days or days <= 0:
        return None
    return stopped_since + days * DAY


def observe_stop(
    known: float | None, ec2_state: str | None, now: float, ec2_stopped_at: float | None = None
) -> float | None:
    """The new "stopped since" of an instance after seeing ``ec2_state`` at ``now``.

    Stopped: the earlier of what was known, EC2's own stop time (never in the future) and now.
    Any other state (running, pending, stopping…): not stopped any more (None).
    """
    if ec2_state != "stopped":
        return None
    candidates = [now]
    if known is not None:
        candidates.append(known)
    if ec2_stopped_at is not None:
        candidates.append(min(ec2_stopped_at, now))
    return min(candidates)


def next_step(due_at: float | None, now: float, job: Mapping[str, Any] | None) -> str:
    """What to do with a stopped instance now: ``wait``, ``snapshot``, ``check`` (snapshots are
    under way) or ``retry-later`` (the last attempt failed and its retry time has not come)."""
    if due_at is None or now < due_at:
        return "wait"
    if job is None:
        return "snapshot"
    if job.get("error"):
        return "snapshot" if now >= float(job.get("retry_at") or 0) else "retry-later"
    return "check"


def snapshots_verdict(snapshots: Sequence[SnapshotInfo], wanted: Sequence[str]) -> str:
    """``completed`` (all wanted snapshots are), ``error`` (one failed or vanished), else
    ``pending``."""
    by_id = {s.id: s for s in snapshots}
    if any(i not in by_id or by_id[i].state in ("error", "recoverable") for i in wanted):
        return "error"
    if all(by_id[i].state == "completed" for i in wanted):
        return "completed"
    return "pending"


def iso(epoch: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC (None stays None)."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")


# -- the sweeper ---------------------------------------------------------------------------------


class ForgottenInstances:
    """Watches stopped instances; snapshots, then terminates those stopped too long."""

    def __init__(self, manager: LaunchManager):
        self.manager = manager
        self.stopped_since: dict[str, float] = {}
        #: instance id → {"snapshots": [ids], "started": t} or {"error", "retry_at", …}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._running: asyncio.Task | None = None
        self._loaded = False

    @property
    def days(self) -> float:
        """The configured limit (0 = off)."""
        return float(self.manager.terminate_stopped_after_days or 0)

    # -- state ---------------------------------------------------------------------------------

    def load(self, saved: Mapping[str, Any] | None) -> None:
        """Take the persisted state (the store's ``forgotten``), ignoring what is malformed."""
        saved = saved or {}
        since = saved.get("stopped_since") or {}
        self.stopped_since = {
            str(k): float(v) for k, v in since.items() if isinstance(v, (int, float))
        }
        jobs = saved.get("jobs") or {}
        self.jobs = {str(k): dict(v) for k, v in jobs.items() if isinstance(v, dict)}
        self._loaded = True

    def to_json(self) -> dict[str, Any]:
        """What is persisted."""
        return {"version": 1, "stopped_since": self.stopped_since, "jobs": self.jobs}

    def _save(self) -> None:
        self.manager._write(self.manager.store.write_json_secret, STORE_NAME, self.to_json())

    # -- feeding (the manager's event subscriber) ------------------------------------------------

    def on_event(self, event: Any) -> None:
        """Note stops and starts from phase changes and polls; sweep after each poll."""
        manager = self.manager
        if event.kind == "phase" and event.instance_id in manager.records:
            records = [manager.records[event.instance_id]]
        elif event.kind == "poll":
            records = list(manager.records.values())
        else:
            return
        now = manager.clock()
        changed = False
        for record in records:
            changed |= self.observe(record, now)
        if changed:
            self._save()
        idle = self._running is None or self._running.done()
        if event.kind == "poll" and self.days > 0 and self._loaded and idle:
            self._running = asyncio.ensure_future(self.sweep())

    def observe(self, record: InstanceRecord, now: float, ec2_stopped_at: float | None = None):
        """Update the record's "stopped since"; True if it changed."""
        old = self.stopped_since.get(record.id)
        state = "terminated" if record.phase == Phase.TERMINATED else record.ec2_state
        stopped_at = ec2_stopped_at if ec2_stopped_at is not None else record_stopped_at(record)
        new = observe_stop(old, state, now, stopped_at)
        if new == old:
            return False
        if new is None:
            self.stopped_since.pop(record.id, None)
            if record.id in self.jobs and state != "stopped":
                self.jobs.pop(record.id)  # started again (or gone): the countdown is over
        else:
            self.stopped_since[record.id] = new
        return True

    # -- what the API shows ----------------------------------------------------------------------

    def fields(self, record: InstanceRecord) -> dict[str, Any]:
        """The ``Instance`` fields: ``terminates_at`` and ``termination`` (null when none)."""
        due = None
        if record.phase == Phase.STOPPED:
            due = terminates_at(self.stopped_since.get(record.id), self.days)
        job = self.jobs.get(record.id)
        termination = None
        if job is not None and due is not None:
            termination = {
                "state": "failed" if job.get("error") else "snapshotting",
                "snapshots": list(job.get("snapshots") or []),
                "error": job.get("error"),
            }
        return {"terminates_at": iso(due), "termination": termination}

    # -- the sweep -------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """One pass over the stopped instances: snapshot, check, or terminate those due."""
        manager = self.manager
        now = manager.clock()
        for record in list(manager.records.values()):
            if record.phase != Phase.STOPPED or record.busy:
                continue
            due = terminates_at(self.stopped_since.get(record.id), self.days)
            step = next_step(due, now, self.jobs.get(record.id))
            try:
                if step == "snapshot":
                    await self._snapshot(record, now)
                elif step == "check":
                    await self._check(record, now)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - one instance must not stop the sweep
                manager.log.exception("jupyter-ec2: the forgotten-instance sweep of %s failed",
                                      record.id)  # fmt: skip
                self._failed(record, now, f"Unexpected error: {err}")

    async def _snapshot(self, record: InstanceRecord, now: float) -> None:
        manager = self.manager
        days = self.days
        manager._log(
            record,
            "forgotten",
            f"Stopped for {days:g} days or more (terminate_stopped_after_days = {days:g}): "
            "snapshotting its disk; it is terminated once the snapshot is completed.",
        )
        try:
            made = await manager._thread(manager.backend.snapshot_volumes, record.id, record.region)
        except EC2LauncherError as err:
            self._failed(record, now, f"Could not snapshot the disk: {err.message}")
            return
        self.jobs[record.id] = {"snapshots": [s.id for s in made], "started": now}
        self._save()
        manager._log(record, "forgotten", "Snapshot " + ", ".join(s.id for s in made) + " begun.")
        await self._check(record, now)

    async def _check(self, record: InstanceRecord, now: float) -> None:
        manager = self.manager
        job = self.jobs[record.id]
        wanted = list(job.get("snapshots") or [])
        try:
            found = await manager._thread(manager.backend.list_snapshots, record.region, wanted)
        except EC2LauncherError as err:
            manager.log.warning("jupyter-ec2: snapshots of %s unknown: %s", record.id, err.message)
            return
        verdict = snapshots_verdict(found, wanted)
        if verdict == "pending":
            return
        if verdict == "error":
            bad = [s for s in found if s.state != "completed"]
            detail = "; ".join(f"{s.id} {s.state}" + (f": {s.message}" if s.message else "")
                               for s in bad) or "a snapshot vanished"  # fmt: skip
            self._failed(record, now, f"The snapshot failed ({detail})")
            return
        manager._log(
            record, "forgotten", "Snapshot " + ", ".join(wanted) + " completed: terminating."
        )
        try:
            await manager.terminate(record.id)
        except EC2LauncherError as err:
            self._failed(record, now, f"Could not terminate it: {err.message}", keep=wanted)
            return
        self.jobs.pop(record.id, None)
        self.stopped_since.pop(record.id, None)
        self._save()

    def _failed(
        self, record: InstanceRecord, now: float, message: str, keep: Sequence[str] = ()
    ) -> None:
        text = f"{message}; the instance is NOT terminated. Trying again in an hour."
        self.jobs[record.id] = {
            "error": text,
            "failed_at": now,
            "retry_at": now + RETRY_SECONDS,
            "snapshots": list(keep),
        }
        self._save()
        self.manager._log(record, "forgotten", text)
        self.manager.log.warning("jupyter-ec2: %s: %s", record.id, text)

    # -- GET snapshots ---------------------------------------------------------------------------

    async def list_snapshots(self) -> list[dict[str, Any]]:
        """Every managed snapshot in the regions in use, with its $/month (null if unknown)."""
        manager = self.manager
        out: list[dict[str, Any]] = []
        for region in manager._regions():
            found = await manager._thread(manager.backend.list_snapshots, region)
            price = None
            if found:
                price = await manager._thread(manager.prices.snapshot_gb_month_usd, region)
            for snap in found:
                item = asdict(snap)
                size = snap.size_gb
                item["monthly_usd"] = (
                    None if price is None or size is None else round(size * price, 4)
                )
                out.append(item)
        return out


def record_stopped_at(record: Any) -> float | None:
    """EC2's own stop time of a record, when the poller kept one (epoch seconds)."""
    moment = getattr(record, "ec2_stopped_at", None)
    return moment.timestamp() if isinstance(moment, dt.datetime) else None


__all__ = [
    "ForgottenInstances",
    "next_step",
    "observe_stop",
    "snapshots_verdict",
    "terminates_at",
]
