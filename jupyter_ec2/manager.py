"""The instance lifecycle carried out: the only asynchronous layer of jupyter-ec2.

``LaunchManager`` keeps one record per managed instance and one task per instance that moves it
through the phases of DESIGN.md §2. The rules (which phase may follow which, which actions a
phase allows, what to do on what EC2 reports) live in the pure :mod:`jupyter_ec2.lifecycle`; this
module only applies its decisions. Every boto3, paramiko and disk call runs in a worker thread.
One poller asks EC2 about every managed instance in a single call per region and interval.
Phase changes, log lines, provisioning steps and polls are published as
:class:`~jupyter_ec2.lifecycle.LifecycleEvent` to subscribers (tests, benches). Its
collaborators subscribe too: :class:`~jupyter_ec2.costs.CostKeeper` (``cost_keeper``) feeds the
EC2 states seen on each phase change and each poll to the cost ledger, which the budget guard
consults before a launch. ``GET preflight`` is answered by ``preflight_checks``
(:class:`~jupyter_ec2.preflight.ManagerPreflight`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import time
import uuid
from collections.abc import Callable
from typing import Any

from jupyter_server.utils import url_path_join
from traitlets import Enum, Float, Instance, Integer

from . import lifecycle as lc
from .before_stop import run_before_stop
from .costs import CostKeeper, CostLedger
from .errors import ConflictError, EC2LauncherError, NotFoundError, ValidationError
from .forgotten import STORE_NAME as FORGOTTEN
from .forgotten import ForgottenInstances
from .images import SavedImages
from .models import LaunchRequest, Phase, Profile, ProfileSet, validate_instance_id
from .origin import remote_url as origin_url
from .preflight import ManagerPreflight
from .provision.params import remote_base_url
from .reconcile import CLOSED, InstanceRecord, InstanceWatcher, StepError, _now
from .resize import SUGGESTED_TYPES, Resizer, start_resize
from .workers import WorkerPool


class LaunchManager(InstanceWatcher):
    """Launches, provisions, forwards, watches, stops, starts and terminates instances."""

    #: The actions this manager carries out; a later issue adds its action here with its handler.
    implemented_actions = frozenset(
        {
            "open",
            "start",
            "stop",
            "reconnect",
            "terminate",
            "keepalive",
            "resize",
            "image",
            "workers",
        }
    )

    backend = Instance("jupyter_ec2.aws.EC2Backend", help="The EC2 layer.")
    provisioner = Instance("jupyter_ec2.provision.Provisioner", help="The SSH provisioning layer.")
    tunnels = Instance("jupyter_ec2.tunnel.TunnelManager", help="The port forwards.")
    store = Instance("jupyter_ec2.store.StateStore", help="State on disk.")
    profiles = Instance(ProfileSet, help="The validated launch profiles.")
    base_url = Instance(str, args=("/",), help="The local server's base_url.")
    on_failure = Enum(
        ["stop", "terminate", "keep"], default_value="stop", help="See EC2Launcher.on_failure."
    )
    open_mode = Enum(["proxy", "direct"], default_value="proxy", help="See EC2Launcher.open_mode.")
    monthly_budget_usd = Float(None, allow_none=True, help="See EC2Launcher.monthly_budget_usd.")
    max_hourly_usd = Float(None, allow_none=True, help="See EC2Launcher.max_hourly_usd.")
    terminate_stopped_after_days = Float(0, help="See EC2Launcher.terminate_stopped_after_days.")

    boot_timeout = Float(
        600.0, min=1.0, help="Seconds to wait for a launched or started instance to run."
    ).tag(config=True)
    max_instances = Integer(
        20, min=1, help="Refuse a launch when this many instances are already running or starting."
    ).tag(config=True)
    connecting_min_seconds = Float(
        1.5,
        min=0.0,
        help="""The shortest time the 'connecting' phase is shown (when the SSH connection itself
        is quicker), longer than a second so that a client polling once a second sees it during
        every bring-up (DESIGN.md §2).""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._poller: asyncio.Task | None = None
        self._started: asyncio.Future | None = None
        #: Where the cost ledger's times come from (epoch seconds); a test may set a simulated one.
        self.clock: Callable[[], float] = time.time
        self.costs = CostLedger()  # the estimate (DESIGN.md §4); fed and saved by cost_keeper
        self._keep_until: dict[str, float] = {}  # instance id -> keepalive asked until (local)
        self.cost_keeper = CostKeeper(self)  # feeds the ledger, guards the budget, GET costs
        self.forgotten = ForgottenInstances(self)  # stopped too long: snapshot, then terminate
        self.subscribe(self.forgotten.on_event)
        self.resizer = Resizer(self.backend, self.prices)
        self.images = SavedImages(self)  # POST instances/{id}/image, GET/DELETE images
        self.workers = WorkerPool(self)  # Dask workers follow their notebook's phase events
        self.preflight_checks = ManagerPreflight(self)  # GET preflight, failed launches

    # -- start-up and shut-down ------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Start once: the first caller re-discovers instances, later callers return at once."""
        if self._started is None:
            self._started = asyncio.ensure_future(self.start())
        await asyncio.shield(self._started)

    async def start(self) -> None:
        """Re-discover managed instances by their tags, then start the poller."""
        self._loop = asyncio.get_running_loop()
        self.tunnels.on_change = self._on_tunnel_change
        self.tunnels.on_retry = self._on_forward_retry
        await self.cost_keeper.load()
        try:
            self.forgotten.load(await self._thread(self.store.read_json, FORGOTTEN))
        except EC2LauncherError as err:  # start afresh: stops count from now on
            self.log.warning("jupyter-ec2: the stopped-instance history is unreadable: %s", err)
            self.forgotten.load(None)
        try:
            await self.poll_once()  # re-discovers every managed instance by its tags
        except EC2LauncherError as err:
            self.log.warning("jupyter-ec2: could not list instances at start-up: %s", err.message)
        self._poller = asyncio.create_task(self._poll_forever(), name="jupyter-ec2-poller")

    async def stop(self) -> None:
        """Cancel every task and close every forward; instances keep running, stop when idle."""
        self._closing = True
        tasks = [r.task for r in self.records.values() if r.task and not r.task.done()]
        tasks += [self._poller] if self._poller else []
        await self.workers.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._thread(self.tunnels.close_all)
        await self._thread(self._writer.shutdown)

    # -- queries -------------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """Every managed instance, newest first, as API ``Instance`` objects."""
        records = sorted(self.records.values(), key=lambda r: r.launched_at, reverse=True)
        return [self.to_json(r) for r in records]

    def get(self, instance_id: str) -> InstanceRecord:
        """The record of a managed instance (NotFoundError if unknown)."""
        record = self.records.get(instance_id)
        if record is None:
            raise NotFoundError(f"No managed instance {instance_id!r:.40}.")
        return record

    def log_after(self, instance_id: str, after: int = 0) -> dict[str, Any]:
        """Log lines with ``seq`` greater than ``after``; ``next`` is the last seq written."""
        record = self.get(instance_id)
        lines = [vars(line) for line in record.log if line.seq > after]
        return {"lines": lines, "next": record.next_seq - 1}

    def remote_endpoint(self, instance_id: str) -> tuple[int, str, str] | None:
        """(local port, remote token, forward state) of a ready instance, for the proxy.

        An instance whose notebook is coming back (reconnect, start, resize) answers the state
        "down", so the proxy says 503 "retry in a moment" rather than 404 to a page still open.
        """
        try:
            record = self.records.get(validate_instance_id(instance_id))
        except ValidationError:
            return None
        if record is None or record.local_port is None or record.token is None:
            return None
        if record.phase in lc.COMING_BACK:
            return record.local_port, record.token, "down"
        if record.phase not in (Phase.READY, Phase.DEGRADED) or record.tunnel_state is None:
            return None
        # The forward's port is read live: it moves if another program took it during a drop.
        forward = self.tunnels.get(instance_id)
        local_port = forward.local_port if forward is not None else record.local_port
        return local_port, record.token, record.tunnel_state

    def remote_base_url(self, instance_id: str) -> str:
        """The remote server's base_url: the proxy path, so no rewriting is ever needed."""
        return remote_base_url(self.base_url, instance_id)

    def remote_url(self, record: InstanceRecord) -> str | None:
        """What "Open" opens (the API's ``url``): the one place it is computed."""
        if record.phase != Phase.READY or record.local_port is None:
            return None
        if self.open_mode == "proxy":
            origins = getattr(self.parent, "instance_origins", None)
            return origin_url(record.id, self.base_url, origins)
        lab = url_path_join(self.remote_base_url(record.id), "lab")
        return f"http://127.0.0.1:{record.local_port}{lab}?token={record.token}"

    def state_of(self, record: InstanceRecord) -> lc.State:
        """What the lifecycle rules need to know of a record."""
        resizing = record.id in self.resizer.active
        return lc.State(
            record.phase, record.ec2_state, record.spot_interrupted, resizing, record.spot
        )

    def to_json(self, record: InstanceRecord) -> dict[str, Any]:
        """The API ``Instance`` of a record."""
        tunnel = None
        if record.tunnel_state is not None:
            tunnel = {"state": record.tunnel_state, "local_port": record.local_port}
        actions = lc.allowed_actions(self.state_of(record), self.implemented_actions)
        url = self.remote_url(record)
        if url is None and "open" in actions:
            actions.remove("open")
        return record.to_json(
            actions=actions,
            pending=lc.is_pending(record.phase),
            url=url,
            tunnel=tunnel,
            idle=self._idle_json(record),
            cost=self.costs.instance_cost(record.id, self.clock()),
            **self.workers.instance_fields(record),
        ) | self.forgotten.fields(record)

    def _idle_json(self, record: InstanceRecord) -> dict[str, Any] | None:
        status = record.idle_status
        if status is None or record.phase not in (Phase.READY, Phase.DEGRADED):
            return None
        left = status.seconds_left() if status.enabled else None
        keep_until = self._keep_until.get(record.id)
        if left is not None and keep_until is not None:
            # The watchdog reads the keepalive before every decision: it cannot stop earlier.
            left = max(left, keep_until - time.time())
        if left is None or status.busy:
            return {"stops_at": None, "seconds_left": None, "busy": True} if status.busy else None
        stops_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=left)
        return {
            "stops_at": stops_at.isoformat(timespec="seconds"),
            "seconds_left": round(left),
            "busy": False,
        }

    # -- actions -------------------------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> dict[str, Any]:
        """Launch an instance for a validated request; provisioning goes on in the background."""
        profile = request.resolve(self.profiles)
        self.cost_keeper.check_budget()
        await self.cost_keeper.check_hourly_limit(
            profile.region, profile.instance_type, profile.spot
        )
        active = sum(r.phase not in CLOSED for r in self.records.values()) + len(self._launching)
        if active >= self.max_instances:
            raise ConflictError(
                f"{active} instances are already running or starting "
                f"(LaunchManager.max_instances = {self.max_instances}); "
                "stop or terminate one first."
            )
        launch_id = str(uuid.uuid4())
        # The slot is reserved before the first await, so concurrent launches respect the cap;
        # until its record exists, the poller must not adopt this launch's instance as unknown.
        self._launching.add(launch_id)
        label = request.name or profile.display_name
        try:
            # Written before RunInstances: a crash in between is found again by the launch-id tag.
            saved = {"launch_id": launch_id, "profile": profile.to_json(), "name": label}
            await self._thread(self.store.write_json_secret, f"launch-{launch_id}", saved)
            result = await self._thread(
                functools.partial(self.backend.launch, profile, label=label, launch_id=launch_id)
            )
        except EC2LauncherError as err:
            await self._thread(self.store.delete_json, f"launch-{launch_id}")
            self.preflight_checks.launch_failed(err)
            if isinstance(err, ValidationError) and err.field in request.overrides:
                # The cloud refused a value the request chose: name it as the request did.
                raise err.prefixed("overrides") from None
            raise
        finally:
            self._launching.discard(launch_id)
        record = InstanceRecord(
            id=result.instance_id,
            name=label,
            profile=profile.name,
            region=result.region,
            instance_type=result.instance_type,
            launch_id=launch_id,
            launched_at=_now(),
            spot=profile.spot,
        )
        self.records[record.id] = record
        await self.images.note_launch(record, profile.ami, result.image_id)
        # The disk is billed from now: its size is the request's, overrides included.
        self.costs.entry(
            record.id, record.region, record.instance_type, volume_gb=profile.volume_gb,
            now=self.clock(),
        )  # fmt: skip
        self._log(
            record,
            "launch",
            f"Launched {record.id} ({profile.instance_type}, "
            f"image {result.image_id}) in {result.region}; host key {result.host_key_fingerprint}.",
        )
        self._set_phase(record, Phase.LAUNCHING, "Instance launched, waiting for it to boot.")
        self._save(record)
        self._write(self.store.delete_json, f"launch-{launch_id}")
        self._run(record, self._bring_up(record, profile, fresh=True))
        self._look_up_price(record)
        return self.to_json(record)

    async def stop_instance(self, instance_id: str) -> dict[str, Any]:
        """Stop an instance: close its forward, then ask EC2 to stop it."""
        return await self._shut_down(instance_id, "stop", Phase.STOPPING, self.backend.stop)

    async def terminate(self, instance_id: str) -> dict[str, Any]:
        """Terminate an instance: everything on its disk is lost."""
        return await self._shut_down(
            instance_id, "terminate", Phase.TERMINATING, self.backend.terminate
        )

    async def start_instance(self, instance_id: str) -> dict[str, Any]:
        """Start a stopped instance and bring its notebook server back."""
        record = self.get(instance_id)
        lc.check_action(record.id, self.state_of(record), "start")
        async with self._action(record):
            await self._thread(self.backend.start, [record.id], record.region)
            record.error = None
            record.ec2_state = "pending"
            record.started_at = time.monotonic()
            self._set_phase(record, Phase.BOOTING, "Starting the instance.")
            self._run(
                record,
                self._bring_up(record, self._profile_of(record), fresh=not record.provisioned),
            )
        return self.to_json(record)

    async def reconnect(self, instance_id: str) -> dict[str, Any]:
        """Re-establish the SSH rule, the forward and the server of a running instance."""
        record = self.get(instance_id)
        lc.check_action(record.id, self.state_of(record), "reconnect")
        async with self._action(record):
            await self._cancel_task(record)
            await self._close_forward(record)
            await self._thread(self._refresh_ssh, record)
            record.error = None
            self._set_phase(record, Phase.CONNECTING, "Reconnecting.")
            self._run(
                record,
                self._bring_up(record, self._profile_of(record), fresh=not record.provisioned),
            )
        return self.to_json(record)

    async def keepalive(self, instance_id: str, minutes: int) -> dict[str, Any]:
        """Postpone the instance's idle auto-stop by ``minutes`` from now (its watchdog decides)."""
        record = self.get(instance_id)
        lc.check_action(record.id, self.state_of(record), "keepalive")
        async with self._action(record):
            asked_at = time.time()
            target = await self._thread(self._target, record)
            await self._thread(
                functools.partial(self.provisioner.keep_alive, target, record.id, minutes)
            )
            self._keep_until[record.id] = asked_at + minutes * 60
            self._log(record, "keepalive", f"Kept alive for {minutes} min: no idle stop before.")
            try:
                status = await self._thread(self.provisioner.read_idle_status, target, record.id)
                record.idle_status = status
            except EC2LauncherError as err:
                self.log.debug("jupyter-ec2: idle status of %s unknown: %s", record.id, err)
        return self.to_json(record)

    async def resize(self, instance_id: str, instance_type: str) -> dict[str, Any]:
        """Change the type on the same disk (checked first; see :mod:`jupyter_ec2.resize`)."""
        record = self.get(instance_id)
        lc.check_action(record.id, self.state_of(record), "resize")
        async with self._action(record):
            await start_resize(self, record, instance_type)
        return self.to_json(record)

    async def resize_options(self, instance_id: str) -> dict[str, Any]:
        """The types this instance may become, with $/h, and why the others may not."""
        record = self.get(instance_id)
        candidates = {*SUGGESTED_TYPES, *(p.instance_type for p in self.profiles.profiles.values())}
        return await self._thread(self.resizer.options, record.id, record.region, candidates)

    async def _shut_down(
        self, instance_id: str, action: str, phase: Phase, call: Callable[..., Any]
    ) -> dict[str, Any]:
        """Stop or terminate: cancel the task, close the forward, then ask EC2."""
        record = self.get(instance_id)
        lc.check_action(record.id, self.state_of(record), action)
        async with self._action(record):
            await self._cancel_task(record)
            was = record.phase
            self._set_phase(record, phase, f"Asking EC2 to {action} the instance.")
            # The answer is the phase the action entered (the poller may already see further).
            answer = self.to_json(record)
            await run_before_stop(self, record, action, was)  # bounded; never blocks the stop
            await self._close_forward(record)
            try:
                await self._thread(call, [record.id], record.region)
            except EC2LauncherError as err:
                self._fail(record, action, err.message)
                raise
        self._changed.set()
        return answer

    @contextlib.asynccontextmanager
    async def _action(self, record: InstanceRecord) -> Any:
        """Serialise user actions on one instance: a second one while the first runs is a 409."""
        if record.busy:
            raise ConflictError(
                f"Another action on {record.id} is still running; try again in a moment."
            )
        record.busy = True
        try:
            yield
        finally:
            record.busy = False

    # -- the lifecycle task ----------------------------------------------------------------------

    async def _bring_up(self, record: InstanceRecord, profile: Profile, *, fresh: bool) -> None:
        """booting → connecting → provisioning → starting → ready, or failed."""
        step = "boot"
        try:
            if record.ec2_state != "running":
                self._set_phase(record, Phase.BOOTING, "Waiting for the instance to run.")
                await self._wait_running(record)
            step = "connect"
            # connecting lasts until the provisioner reports a step past the SSH connection.
            self._set_phase(record, Phase.CONNECTING, f"Connecting over SSH to {record.address}.")
            target = await self._thread(self._target, record)
            step = "provision"
            result = await self._thread(
                functools.partial(
                    self.provisioner.provision,
                    target,
                    record.id,
                    self.base_url,
                    self._progress_callback(record),
                    token=record.token,
                    environment=profile.environment,
                    idle_stop_minutes=profile.idle_stop_minutes,
                    remote_port=record.remote_port,
                    facts=self._connect_facts(record),
                    fast=not fresh,
                    image_source=record.image_source,
                )
            )
            record.remote_port, record.token = result.port, result.token
            record.provisioned = True
            if not result.changed:
                self._log(record, "provision", "Every setup step was already done.")
            self._save(record)
            step = "forward"
            await self._hold_connecting(record)
            self._set_phase(record, Phase.STARTING, "Opening the port forward.")
            await self._open_forward(record, target)
            self._set_phase(record, Phase.READY, "Ready.")
            self._log(record, "ready", "The notebook server is ready.")
        except asyncio.CancelledError:
            raise
        except EC2LauncherError as err:
            await self._handle_failure(record, getattr(err, "step", None) or step, err.message)
        except Exception as err:  # noqa: BLE001 - a bug must not leave an instance running unseen
            self.log.exception("jupyter-ec2: bringing up %s failed", record.id)
            await self._handle_failure(record, step, f"Unexpected error: {err}")

    async def _hold_connecting(self, record: InstanceRecord) -> None:
        """Keep 'connecting' shown for ``connecting_min_seconds`` before leaving it."""
        if record.phase == Phase.CONNECTING:
            wait = record.entered_at + self.connecting_min_seconds - time.monotonic()
            await asyncio.sleep(max(0.0, wait))

    async def _reattach(self, record: InstanceRecord) -> None:
        """After a restart: a provisioned, running instance gets its forward back, nothing more."""
        try:
            self._set_phase(record, Phase.CONNECTING, "Re-attaching after a restart.")
            self._log(record, "reattach", "Re-attached after a restart; provisioning not re-run.")
            target = await self._thread(self._target, record)
            await self._hold_connecting(record)
            self._set_phase(record, Phase.STARTING, "Opening the port forward.")
            await self._open_forward(record, target)
            self._set_phase(record, Phase.READY, "Ready.")
        except asyncio.CancelledError:
            raise
        except EC2LauncherError as err:
            # The server may have died with the instance's reboot: run the idempotent setup.
            self._log(
                record, "reattach", f"Re-attaching failed ({err.message}); running setup again."
            )
            await self._bring_up(record, self._profile_of(record), fresh=False)

    async def _wait_running(self, record: InstanceRecord) -> None:
        """Wait for EC2 to say running, asking the poller with a short backoff (0.25 s → fast)."""
        deadline = time.monotonic() + self.boot_timeout
        delay = self.poll_min_gap
        while record.ec2_state != "running":
            if record.ec2_state in ("stopped", "stopping", "terminated", "shutting-down"):
                raise StepError("boot", f"The instance is {record.ec2_state} instead of running.")
            if time.monotonic() > deadline:
                raise StepError(
                    "boot", f"The instance did not reach 'running' in {self.boot_timeout:.0f} s."
                )
            record.state_changed.clear()
            self._changed.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(record.state_changed.wait(), timeout=delay)
            delay = min(delay * 2, self.poll_fast)

    async def _open_forward(self, record: InstanceRecord, target: Any) -> None:
        forward = await self._thread(
            functools.partial(
                self.tunnels.open,
                record.id,
                target,
                record.remote_port,
                local_port=record.local_port,
                ssh_config_file=self.provisioner.ssh_config_file,
            )
        )
        record.local_port = forward.local_port
        record.tunnel_state = str(forward.state.value)
        self._save(record)
        self._log(record, "forward", f"Forward up on 127.0.0.1:{record.local_port}.")

    async def _close_forward(self, record: InstanceRecord) -> None:
        if record.tunnel_state is not None:
            record.tunnel_state = None
            await self._thread(self.tunnels.close, record.id)

    async def _handle_failure(self, record: InstanceRecord, step: str, message: str) -> None:
        self._fail(record, step, message)
        await self._close_forward(record)
        policy = self.on_failure
        if policy == "keep":
            self._log(record, step, "Left running (on_failure = keep).")
            return
        try:
            if policy == "terminate":
                await self._thread(self.backend.terminate, [record.id], record.region)
                self._log(record, step, "Terminated after the failure (on_failure = terminate).")
            elif record.ec2_state not in ("stopped", "stopping", "terminated"):
                await self._thread(self.backend.stop, [record.id], record.region)
                self._log(
                    record,
                    step,
                    "Stopped after the failure, so it costs no compute; "
                    "retry with Start or remove it with Terminate.",
                )
        except EC2LauncherError as err:
            self._log(record, step, f"Could not {policy} the instance: {err.message}")
        self._changed.set()

    def _progress_callback(self, record: InstanceRecord) -> Callable[[str, int, str], None]:
        loop = self._loop or asyncio.get_running_loop()

        def progress(step: str, percent: int, text: str) -> None:
            self._emit("progress", record, step=step, text=str(text)[:160])
            loop.call_soon_threadsafe(self._on_progress, record, step, percent, text)

        return progress

    def _on_progress(self, record: InstanceRecord, step: str, percent: int, text: str) -> None:
        if record.phase not in (Phase.PROVISIONING, Phase.STARTING, Phase.CONNECTING):
            return
        if record.phase == Phase.CONNECTING and step != "connect":
            wait = record.entered_at + self.connecting_min_seconds - time.monotonic()
            asyncio.get_running_loop().call_later(max(0.0, wait), self._leave_connecting, record)
        if step in ("service", "ready") and record.phase == Phase.PROVISIONING:
            self._set_phase(record, Phase.STARTING, None)
        record.progress = max(record.progress, min(95, 30 + int(percent * 0.6)))
        if text:
            record.message = text
            self._log(record, step, text)
        record.updated_at = _now()

    def _leave_connecting(self, record: InstanceRecord) -> None:
        if record.phase == Phase.CONNECTING:
            self._set_phase(record, Phase.PROVISIONING, "Setting up Jupyter on the instance.")


__all__ = ["InstanceRecord", "LaunchManager"]
