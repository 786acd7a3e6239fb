"""The records of managed instances and what EC2 reports about them, applied.

:class:`InstanceWatcher` is the base of :class:`~jupyter_ec2.manager.LaunchManager`: it keeps one
:class:`InstanceRecord` per instance, owns the one writer of a record's phase (checked against
:mod:`jupyter_ec2.lifecycle`'s table, published as a
:class:`~jupyter_ec2.lifecycle.LifecycleEvent`), writes the state files in a thread of their own,
and runs the poller: one ``DescribeInstances`` per region and interval for every instance, whose
answers are turned into lifecycle decisions and carried out. The manager adds the user's actions
and the bring-up task (``_bring_up``, ``_reattach``) that the decisions start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from traitlets import Float
from traitlets.config import LoggingConfigurable

from . import lifecycle as lc
from .errors import EC2LauncherError, NotFoundError
from .lifecycle import Decision, Do, LifecycleEvent
from .models import Instance as InstanceData
from .models import LogLine, Phase, Profile
from .pricing import PriceCatalog

MAX_LOG_LINES = 5000
#: Phases that hold no launch slot and need no price.
CLOSED = frozenset({Phase.STOPPED, Phase.TERMINATED, Phase.FAILED})


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class InstanceRecord(InstanceData):
    """An :class:`~jupyter_ec2.models.Instance` with the manager's runtime state."""

    address: str | None = None
    tunnel_state: str | None = None
    idle_status: Any = None
    log: list[LogLine] = field(default_factory=list)
    next_seq: int = 1
    task: asyncio.Task | None = None
    busy: bool = False  # a user action runs: a second one gets 409
    state_changed: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)  # last launch or start
    absent_since: float | None = None  # first describe answer that left it out
    entered_at: float = field(default_factory=time.monotonic)  # when the phase began
    ec2_stopped_at: Any = None  # EC2's own stop time when it gives one (jupyter_ec2.forgotten)
    image_source: str | None = None  # launched from a saved image of this instance


class InstanceWatcher(LoggingConfigurable):
    """The records, their one phase writer and event stream, and the poller that updates them."""

    poll_fast = Float(
        2.0, min=0.05, help="Seconds between EC2 polls while an instance is changing."
    ).tag(config=True)
    poll_slow = Float(
        30.0, min=0.1, help="Seconds between EC2 polls when every instance is steady."
    ).tag(config=True)
    poll_min_gap = Float(
        0.25,
        min=0.01,
        help="""The shortest time between two EC2 polls, when a launch or an action asks for one
        sooner than poll_fast (waiting for a new instance to run backs off from this to
        poll_fast).""",
    ).tag(config=True)
    idle_check_interval = Float(
        60.0, min=0.1, help="Seconds between reads of a ready instance's idle auto-stop status."
    ).tag(config=True)
    absence_grace = Float(
        180.0,
        min=0.0,
        help="""EC2 is eventually consistent: an instance missing from DescribeInstances is "not
        yet" until it has been missing this many seconds and it is this long past its launch or
        start; then a describe by id that answers InvalidInstanceID.NotFound concludes it is
        terminated (and only then is its pinned host key forgotten).""",
    ).tag(config=True)
    ssh_refresh_interval = Float(
        60.0,
        min=0.0,
        help="""The shortest time between two refreshes of an instance's SSH rule when its
        forward fails to reconnect (the caller's public address may have changed).""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.records: dict[str, InstanceRecord] = {}
        self._launching: set[str] = set()  # reserved launch slots (launch ids)
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._last_idle_check: dict[str, float] = {}
        self._last_ssh_refresh: dict[str, float] = {}
        self._pricing: set[str] = set()
        self._subscribers: list[Callable[[LifecycleEvent], None]] = []
        # One writer thread keeps the state files' writes in order and off the event loop.
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "jupyter-ec2-store")
        self.aws_calls = 0  # describe calls made by the poller, for the benchmarks
        self.refused_transitions = 0  # transitions the table refused (a bug if ever > 0)
        self.prices = PriceCatalog(
            lambda service, region: self.backend.client(region, service=service), self.log
        )

    async def _bring_up(self, record: InstanceRecord, profile: Profile, *, fresh: bool) -> None:
        raise NotImplementedError  # the manager's task: booting → … → ready

    async def _reattach(self, record: InstanceRecord) -> None:
        raise NotImplementedError  # the manager's task: re-open a provisioned instance's forward

    def subscribe(self, callback: Callable[[LifecycleEvent], None]) -> Callable[[], None]:
        """Call ``callback`` with every event (``progress`` ones from a worker thread)."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _emit(self, kind: str, record: InstanceRecord | None = None, **fields: Any) -> None:
        event = LifecycleEvent(kind, record.id if record else None, time=time.time(), **fields)
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a subscriber's bug must not stop the lifecycle
                self.log.exception("jupyter-ec2: an event subscriber failed")

    def _look_up_price(self, record: InstanceRecord) -> None:
        """Fill ``hourly_usd`` when AWS states a price; a failed lookup is retried later."""
        if record.id in self._pricing:
            return
        self._pricing.add(record.id)

        async def look_up() -> None:
            try:
                record.hourly_usd = await self._thread(
                    self.prices.hourly_usd, record.region, record.instance_type, record.spot
                )
            finally:
                self._pricing.discard(record.id)

        self._run_detached(look_up())

    def _refresh_ssh(self, record: InstanceRecord) -> None:
        """Allow SSH from the caller's current address (in a thread); a failure is only logged."""
        self._last_ssh_refresh[record.id] = time.monotonic()
        try:
            groups = self.backend.owned([record.id], record.region)[0].security_group_ids
            self.backend.refresh_ssh_access(record.region, group_ids=groups)
        except EC2LauncherError as err:
            self.log.warning("jupyter-ec2: SSH rule of %s not refreshed: %s", record.id, err)

    # -- the poller ------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        last_poll = 0.0
        while not self._closing:
            busy = any(lc.is_pending(r.phase) for r in self.records.values())
            interval = self.poll_fast if busy else self.poll_slow
            self._changed.clear()
            wait = max(0.0, last_poll + interval - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=wait)
                # A change was signalled: poll now, but never more often than poll_min_gap.
                await asyncio.sleep(max(0.0, last_poll + self.poll_min_gap - time.monotonic()))
            last_poll = time.monotonic()
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except EC2LauncherError as err:
                self.log.warning("jupyter-ec2: polling EC2 failed: %s", err.message)
            except Exception:
                self.log.exception("jupyter-ec2: polling EC2 failed")

    def _regions(self) -> list[str]:
        regions = {p.region for p in self.profiles.profiles.values()}
        regions.update(r.region for r in self.records.values())
        regions.add(self.backend.region)
        return sorted(regions)

    async def poll_once(self) -> None:
        """One ``DescribeInstances`` per region for every managed instance, then reconcile."""
        t0 = time.monotonic()
        for region in self._regions():
            found = await self._thread(self.backend.list_instances, region)
            self.aws_calls += 1
            pool = getattr(self, "workers", None)  # Dask workers are their notebook's, not ours
            if pool is not None:
                found = await pool.take(found)
            seen = {inst.instance_id for inst in found}
            for inst in found:
                record = self.records.get(inst.instance_id)
                if record is None:
                    if inst.state != "terminated" and inst.launch_id not in self._launching:
                        await self._adopt(inst)
                elif record.phase != Phase.TERMINATED:
                    self._observe(record, inst)
            missing = [r for r in self.records.values() if r.region == region and r.id not in seen]
            for record in missing:
                if record.phase != Phase.TERMINATED:
                    await self._absent(record)
        for record in self.records.values():
            unpriced = record.hourly_usd is None and record.phase not in CLOSED
            if unpriced and self.prices.due(record.region, record.instance_type, record.spot):
                self._look_up_price(record)
        await self._check_idle()
        self._emit("poll", data={"t0": t0, "aws_calls": self.aws_calls})

    def _observe(self, record: InstanceRecord, inst: Any) -> None:
        """Apply what one describe answer says of an instance."""
        record.address = inst.public_ip or inst.public_dns or inst.private_ip
        record.ec2_stopped_at = getattr(inst, "stopped_at", None)
        if record.absent_since is not None:
            record.absent_since = None
            self._log(record, "ec2", "EC2 reports the instance again.")
        if inst.state == record.ec2_state:
            return
        previous, record.ec2_state = record.ec2_state, inst.state
        record.spot_interrupted = inst.state in ("stopping", "stopped") and (
            lc.is_spot_interruption(getattr(inst, "state_reason_code", None))
        )
        record.state_changed.set()
        reason = f" ({inst.state_reason})" if inst.state_reason else ""
        self._log(record, "ec2", f"EC2 state {previous} → {inst.state}{reason}")
        self._apply(record, lc.on_ec2_state(self.state_of(record), inst.state, inst.state_reason))

    async def _absent(self, record: InstanceRecord) -> None:
        """An instance left out of a describe answer: "not yet" until it is certainly gone."""
        now = time.monotonic()
        if record.absent_since is None:
            record.absent_since = now
            self._log(record, "ec2", "Not in EC2's answer (EC2 is eventually consistent).")
        decision = lc.on_absent(
            now - record.absent_since, now - record.started_at, self.absence_grace, False
        )
        if decision.do is Do.CONFIRM:
            gone = await self._confirm_gone(record)
            if not gone:
                return
            decision = lc.on_absent(
                now - record.absent_since, now - record.started_at, self.absence_grace, True
            )
        self._apply(record, decision)

    async def _confirm_gone(self, record: InstanceRecord) -> bool:
        """Describe by id with backoff: True only when EC2 keeps answering NotFound."""
        delay = self.poll_min_gap
        for _attempt in range(3):
            try:
                inst = (await self._thread(self.backend.owned, [record.id], record.region))[0]
            except NotFoundError:
                await asyncio.sleep(delay)
                delay *= 2
                continue
            except EC2LauncherError:
                return False
            self._observe(record, inst)
            return False
        return True

    def _apply(self, record: InstanceRecord, decision: Decision) -> None:
        """Carry out a lifecycle decision."""
        if decision.do in (Do.STOPPED, Do.TERMINATED):
            if record.task and not record.task.done():
                record.task.cancel()
            if record.tunnel_state is not None:
                record.tunnel_state = None
                self._run_detached(self._thread(self.tunnels.close, record.id))
        if decision.do in (Do.SET_PHASE, Do.STOPPED, Do.TERMINATED, Do.BRING_UP, Do.REATTACH):
            assert decision.phase is not None
            self._set_phase(record, decision.phase, decision.message)
        if decision.do is Do.TERMINATED:
            record.ec2_state = "terminated"
            self._log(record, "ec2", "Terminated; its state files are removed.")
            self._write(self.store.forget, record.id)
        elif decision.do is Do.BRING_UP:
            record.started_at = time.monotonic()
            profile = self._profile_of(record)
            self._run(record, self._bring_up(record, profile, fresh=not record.provisioned))
        elif decision.do is Do.REATTACH:
            self._run(record, self._reattach(record))

    async def _adopt(self, inst: Any) -> None:
        """A managed instance this server has no record of: re-attach or show it."""
        saved = await self._thread(self.store.read_json, inst.instance_id) or {}
        launched = inst.launch_time.isoformat(timespec="seconds") if inst.launch_time else _now()
        record = InstanceRecord(
            id=inst.instance_id,
            name=saved.get("name") or inst.name or inst.instance_id,
            profile=saved.get("profile") or inst.profile or "",
            region=inst.region,
            instance_type=inst.instance_type,
            launch_id=saved.get("launch_id") or inst.launch_id or "",
            ec2_state=inst.state,
            launched_at=saved.get("launched_at") or launched,
            remote_port=saved.get("remote_port"),
            token=saved.get("token"),
            local_port=saved.get("local_port"),
            provisioned=bool(saved.get("provisioned")),
            address=inst.public_ip or inst.public_dns or inst.private_ip,
            spot=bool(inst.spot),
            spot_interrupted=lc.is_spot_interruption(getattr(inst, "state_reason_code", None)),
        )
        self.records[record.id] = record
        self._look_up_price(record)
        if inst.launch_id:
            # A launch that crashed between RunInstances and saving its record.
            self._write(self.store.delete_json, f"launch-{inst.launch_id}")
        decision = lc.on_adopt(
            inst.state,
            failed=bool(saved.get("error")),
            provisioned=record.provisioned,
            has_token=bool(record.token),
            spot_interrupted=record.spot_interrupted,
            reason=inst.state_reason,
        )
        if decision.phase == Phase.FAILED:
            record.error = saved["error"]
            decision = Decision(Do.SET_PHASE, Phase.FAILED, record.error.get("message", "Failed."))
        if decision.do is Do.BRING_UP:
            self._log(record, "adopt", decision.message)
        self._apply(record, decision)
        self._save(record)

    async def _check_idle(self) -> None:
        now = time.monotonic()
        for record in list(self.records.values()):
            if record.phase != Phase.READY:
                continue
            if now - self._last_idle_check.get(record.id, 0) < self.idle_check_interval:
                continue
            self._last_idle_check[record.id] = now
            try:
                target = await self._thread(self._target, record)
                status = await self._thread(self.provisioner.read_idle_status, target, record.id)
                record.idle_status = status
            except EC2LauncherError as err:
                self.log.debug("jupyter-ec2: idle status of %s unknown: %s", record.id, err)

    # -- helpers -------------------------------------------------------------------------------

    def _connect_facts(self, record: InstanceRecord) -> Callable[[], Any]:
        """What is known of an instance, to explain an SSH connection that never came up."""
        from .provision.ssh import ConnectFacts

        def facts() -> ConnectFacts:
            try:
                inst = self.backend.owned([record.id], record.region)[0]
            except EC2LauncherError:
                return ConnectFacts(instance_state=record.ec2_state, public_address=record.address)
            return ConnectFacts(
                instance_state=inst.state,
                public_address=inst.public_ip or inst.public_dns,
                private_address=inst.private_ip,
                security_group=", ".join(inst.security_group_ids) or None,
            )

        return facts

    def _target(self, record: InstanceRecord) -> Any:
        """Where and how to reach an instance over SSH (called in a worker thread)."""
        from .provision.ssh import SSHTarget

        if record.address is None:
            inst = self.backend.owned([record.id], record.region)[0]
            record.address = inst.public_ip or inst.public_dns or inst.private_ip
        if record.address is None:
            raise StepError(
                "connect",
                "The instance has no IP address: it needs a public IP, or an ssh_config "
                "ProxyJump for a private subnet.",
            )
        host_key = self.store.pinned_host_key(record.id)
        if host_key is None:
            raise StepError(
                "connect",
                "The instance's host key is not known here, so it cannot be verified; "
                "terminate it and launch a new one.",
            )
        return SSHTarget(
            host=record.address,
            host_public_key=host_key,
            client_key=self.store.load_or_create_key_pair(),
        )

    def _profile_of(self, record: InstanceRecord) -> Profile:
        profile = self.profiles.get(record.profile)
        if profile is None:
            # The profile was removed from the config: keep going with a minimal one.
            profile = Profile(
                name=record.profile or "unknown",
                display_name=record.name,
                region=record.region,
                instance_type=record.instance_type,
                environment=self.provisioner.environment,
                idle_stop_minutes=self.provisioner.idle_stop_minutes,
            )
        return profile

    def _on_tunnel_change(self, instance_id: str, state: str) -> None:
        """Called by the forward from its own thread when its state changes."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(
            self._apply_tunnel_state, instance_id, str(getattr(state, "value", state))
        )

    def _on_forward_retry(self, instance_id: str, failures: int) -> None:
        """The forward failed to reconnect (its thread): the caller's address may have moved."""
        record = self.records.get(instance_id)
        last = self._last_ssh_refresh.get(instance_id, float("-inf"))
        if record is not None and time.monotonic() - last >= self.ssh_refresh_interval:
            self._refresh_ssh(record)

    def _apply_tunnel_state(self, instance_id: str, state: str) -> None:
        record = self.records.get(instance_id)
        if record is None or record.tunnel_state is None:
            return
        record.tunnel_state = state
        forward = self.tunnels.get(instance_id)
        if state == "up" and forward is not None and forward.local_port != record.local_port:
            record.local_port = forward.local_port  # the old port was taken while it was down
            self._save(record)
        if state == "up" and record.phase == Phase.DEGRADED:
            self._set_phase(record, Phase.READY, "Ready; the forward is back.")
        elif state in ("reconnecting", "down") and record.phase == Phase.READY:
            self._set_phase(record, Phase.DEGRADED, "The forward was lost; reconnecting.")
        self._log(record, "forward", f"Forward {state}.")

    def _set_phase(self, record: InstanceRecord, phase: Phase, message: str | None) -> None:
        """The one writer of ``phase``: checks the transition table, then emits an event."""
        old = record.phase
        if not lc.can_transition(old, phase):
            self.refused_transitions += 1
            self.log.error("jupyter-ec2: %s: refused transition %s → %s", record.id, old, phase)
            return
        record.phase = phase
        if message is not None:
            record.message = message
        record.progress = lc.progress_on_entering(phase, record.progress)
        record.updated_at = _now()
        if old != phase:
            record.entered_at = time.monotonic()
        if phase not in (Phase.READY, Phase.DEGRADED):
            record.idle_status = None
        self._changed.set()
        self._emit("phase", record, phase=phase, old=old, text=record.message)

    def _fail(self, record: InstanceRecord, step: str, message: str) -> None:
        record.error = {"step": step, "message": message}
        self._set_phase(record, Phase.FAILED, f"Failed at {step}: {message}")
        self._log(record, step, f"FAILED: {message}")
        self._save(record)

    def _log(self, record: InstanceRecord, step: str, text: str) -> None:
        for line in str(text).splitlines() or [""]:
            record.log.append(LogLine(record.next_seq, _now(), step, line))
            record.next_seq += 1
            self._emit("log", record, step=step, text=line[:160])
        if len(record.log) > MAX_LOG_LINES:
            del record.log[: len(record.log) - MAX_LOG_LINES]

    def _save(self, record: InstanceRecord) -> None:
        """Write the record's state file in the writer thread (in order, never on the loop)."""
        if record.phase == Phase.TERMINATED:
            return
        snapshot = record.persistent()

        def write() -> None:
            try:
                self.store.write_json_secret(record.id, snapshot)
            except (EC2LauncherError, OSError) as err:
                self.log.warning("jupyter-ec2: could not save the state of %s: %s", record.id, err)

        self._write(write)

    def _write(self, func: Callable[..., Any], *args: Any) -> None:
        """Run a store call in the writer thread, after every write queued before it."""
        with contextlib.suppress(RuntimeError):  # after stop(): the writer is shut down
            self._writer.submit(func, *args)

    def _run(self, record: InstanceRecord, coro: Any) -> None:
        if record.task and not record.task.done():
            record.task.cancel()
        record.task = asyncio.create_task(coro, name=f"jupyter-ec2-{record.id}")

    def _run_detached(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _cancel_task(self, record: InstanceRecord) -> None:
        task = record.task
        if task and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @staticmethod
    async def _thread(func: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(func, *args))


class StepError(EC2LauncherError):
    """A lifecycle step failed for a reason the manager itself found."""

    status = 502

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


__all__ = ["CLOSED", "InstanceRecord", "InstanceWatcher", "StepError"]
