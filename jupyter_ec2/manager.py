"""The instance lifecycle: the only asynchronous layer of jupyter-ec2.

``LaunchManager`` owns one record per managed instance and one task per instance that moves it
through the phases of DESIGN.md §2. Every boto3 and paramiko call runs in a worker thread
(``anyio.to_thread.run_sync``); the event loop only keeps books. One poller asks EC2 about every
managed instance in a single call per region and interval, however many browser tabs poll the
REST API, and reconciles what it sees with what the records say.

What is needed to re-attach after a restart (the pinned host key, the remote token and port,
the local port, the launch request) is kept in 0600 files by :class:`~jupyter_ec2.store.StateStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from jupyter_server.utils import url_path_join
from traitlets import Enum, Float, Instance, Integer
from traitlets.config import LoggingConfigurable

from .errors import ConflictError, EC2LauncherError, NotFoundError, ValidationError
from .models import LaunchRequest, Phase, Profile, ProfileSet
from .preflight import Preflight, point_to_check
from .pricing import PriceCatalog
from .provision.params import remote_base_url

#: Phases in which something is expected to change soon: the poller runs fast then.
TRANSITIONAL = {
    Phase.LAUNCHING,
    Phase.BOOTING,
    Phase.CONNECTING,
    Phase.PROVISIONING,
    Phase.STARTING,
    Phase.DEGRADED,
    Phase.STOPPING,
    Phase.TERMINATING,
}
#: Progress shown for each phase before its own steps report finer values.
PHASE_PROGRESS = {
    Phase.LAUNCHING: 5,
    Phase.BOOTING: 10,
    Phase.CONNECTING: 20,
    Phase.PROVISIONING: 30,
    Phase.STARTING: 90,
    Phase.READY: 100,
}
MAX_LOG_LINES = 5000


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class LogLine:
    """One line of an instance's log."""

    seq: int
    time: str
    step: str
    text: str


@dataclass
class InstanceRecord:
    """What the manager knows of one instance; ``to_json`` gives the API's ``Instance``."""

    id: str
    name: str
    profile: str
    region: str
    instance_type: str
    launch_id: str
    phase: Phase = Phase.LAUNCHING
    progress: int = 0
    message: str = ""
    error: dict[str, str] | None = None
    ec2_state: str = "pending"
    launched_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    hourly_usd: float | None = None
    address: str | None = None
    remote_port: int | None = None
    token: str | None = None
    local_port: int | None = None
    tunnel_state: str | None = None
    provisioned: bool = False
    idle_message: str = ""
    log: list[LogLine] = field(default_factory=list)
    next_seq: int = 0
    task: asyncio.Task | None = None
    # Serialises user actions on this instance: a second one while the first runs gets 409.
    busy: bool = False
    # Set when the poller sees a new EC2 state, so a waiting task wakes at once.
    state_changed: asyncio.Event = field(default_factory=asyncio.Event)

    def persistent(self) -> dict[str, Any]:
        """The fields saved to disk to re-attach after a restart."""
        return {
            "id": self.id,
            "name": self.name,
            "profile": self.profile,
            "region": self.region,
            "instance_type": self.instance_type,
            "launch_id": self.launch_id,
            "launched_at": self.launched_at,
            "remote_port": self.remote_port,
            "token": self.token,
            "local_port": self.local_port,
            "provisioned": self.provisioned,
            "error": self.error,
        }


class LaunchManager(LoggingConfigurable):
    """Launches, provisions, forwards, watches, stops, starts and terminates instances."""

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
    boot_timeout = Float(
        600.0, min=1.0, help="Seconds to wait for a launched or started instance to run."
    ).tag(config=True)
    idle_check_interval = Float(
        60.0, min=0.1, help="Seconds between reads of a ready instance's idle auto-stop status."
    ).tag(config=True)
    max_instances = Integer(
        20, min=1, help="Refuse a launch when this many instances are already running or starting."
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.records: dict[str, InstanceRecord] = {}
        self._poller: asyncio.Task | None = None
        self._started: asyncio.Future | None = None
        self._launching: set[str] = set()
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._last_idle_check: dict[str, float] = {}
        self.aws_calls = 0  # describe calls made by the poller, for the benchmarks
        self.prices = PriceCatalog(
            lambda service, region: self.backend.client(region, service=service), self.log
        )
        self.preflight_checks = Preflight(
            self.backend,
            lambda: list(self.profiles.profiles.values()),
            ssh_engine=lambda: str(getattr(self.tunnels, "engine", "auto")),
        )

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
        try:
            await self.poll_once()  # re-discovers every managed instance by its tags
        except EC2LauncherError as err:
            self.log.warning("jupyter-ec2: could not list instances at start-up: %s", err.message)
        self._poller = asyncio.create_task(self._poll_forever(), name="jupyter-ec2-poller")

    async def stop(self) -> None:
        """Cancel every task and close every forward; instances keep running, stop when idle."""
        self._closing = True
        tasks = [r.task for r in self.records.values() if r.task and not r.task.done()]
        if self._poller:
            tasks.append(self._poller)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._thread(self.tunnels.close_all)

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

    def log_after(self, instance_id: str, after: int) -> dict[str, Any]:
        """Log lines with ``seq`` greater than or equal to ``after``."""
        record = self.get(instance_id)
        lines = [vars(line) for line in record.log if line.seq >= after]
        return {"lines": lines, "next": record.next_seq}

    def remote_endpoint(self, instance_id: str) -> tuple[int, str, str] | None:
        """(local port, remote token, forward state) of a ready instance, for the proxy."""
        record = self.records.get(instance_id)
        if record is None or record.local_port is None or record.token is None:
            return None
        if record.phase not in (Phase.READY, Phase.DEGRADED) or record.tunnel_state is None:
            return None
        # The forward's port is read live: it moves if another program took it during a drop.
        forward = self.tunnels.get(instance_id)
        local_port = forward.local_port if forward is not None else record.local_port
        return local_port, record.token, record.tunnel_state

    def remote_base_url(self, instance_id: str) -> str:
        """The remote server's base_url: the proxy path, so no rewriting is ever needed."""
        return remote_base_url(self.base_url, instance_id)

    def to_json(self, record: InstanceRecord) -> dict[str, Any]:
        """The API ``Instance`` of a record."""
        url = None
        if record.phase == Phase.READY and record.local_port is not None:
            if self.open_mode == "proxy":
                url = url_path_join(self.remote_base_url(record.id), "lab")
            else:
                url = (
                    f"http://127.0.0.1:{record.local_port}"
                    f"{url_path_join(self.remote_base_url(record.id), 'lab')}?token={record.token}"
                )
        tunnel = None
        if record.tunnel_state is not None:
            tunnel = {"state": record.tunnel_state, "local_port": record.local_port}
        message = record.message
        if record.phase == Phase.READY and record.idle_message:
            message = record.idle_message
        return {
            "id": record.id,
            "name": record.name,
            "profile": record.profile,
            "region": record.region,
            "instance_type": record.instance_type,
            "ec2_state": record.ec2_state,
            "phase": record.phase.value,
            "progress": record.progress,
            "message": message,
            "error": record.error,
            "tunnel": tunnel,
            "url": url,
            "launched_at": record.launched_at,
            "updated_at": record.updated_at,
            "hourly_usd": record.hourly_usd,
        }

    # -- actions -------------------------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> dict[str, Any]:
        """Launch an instance for a validated request; provisioning goes on in the background."""
        profile = request.resolve(self.profiles)
        active = [
            r
            for r in self.records.values()
            if r.phase not in (Phase.STOPPED, Phase.TERMINATED, Phase.FAILED)
        ]
        if len(active) >= self.max_instances:
            raise ConflictError(
                f"{len(active)} instances are already running or starting "
                f"(LaunchManager.max_instances); stop or terminate one first."
            )
        launch_id = str(uuid.uuid4())
        label = request.name or f"{profile.display_name}"
        # Written before RunInstances: a crash in between is found again by the launch-id tag.
        self.store.write_json_secret(
            f"launch-{launch_id}",
            {
                "launch_id": launch_id,
                "profile": profile.to_json(),
                "name": label,
                "started_at": _now(),
            },
        )
        # Until its record exists, the poller must not adopt this launch's instance as unknown.
        self._launching.add(launch_id)
        try:
            result = await self._thread(
                functools.partial(self.backend.launch, profile, label=label, launch_id=launch_id)
            )
        except ValidationError as err:
            self.store.delete_json(f"launch-{launch_id}")
            self._point_to_check(err)
            if err.field in request.overrides:
                # The cloud refused a value the request chose: name it as the request did.
                raise err.prefixed("overrides") from None
            raise
        except EC2LauncherError as err:
            self.store.delete_json(f"launch-{launch_id}")
            self._point_to_check(err)
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
        )
        self.records[record.id] = record
        self._log(
            record,
            "launch",
            f"Launched {record.id} ({profile.instance_type}, "
            f"image {result.image_id}) in {result.region}; host key {result.host_key_fingerprint}.",
        )
        self._set_phase(record, Phase.LAUNCHING, "Instance launched, waiting for it to boot.")
        self._save(record)
        self.store.delete_json(f"launch-{launch_id}")
        self._run(record, self._bring_up(record, profile, fresh=True))
        self._run_detached(self._look_up_price(record, profile.spot))
        return self.to_json(record)

    # -- preflight ("Check my AWS setup") --------------------------------------------------------

    async def preflight(self, refresh: bool = False) -> dict[str, Any]:
        """``GET preflight``: the setup checks, run in a worker thread and kept briefly."""
        report = await self._thread(self.preflight_checks.report, refresh)
        return report.to_json()

    def _point_to_check(self, err: EC2LauncherError) -> None:
        """A launch failed: name the preflight check that explains it, and re-check next time."""
        if point_to_check(err) is err and getattr(err, "check", None):
            self.preflight_checks.invalidate()

    async def _look_up_price(self, record: InstanceRecord, spot: bool) -> None:
        """Fill ``hourly_usd`` when AWS states a price (None stays "unknown")."""
        record.hourly_usd = await self._thread(
            self.prices.hourly_usd, record.region, record.instance_type, spot
        )

    async def stop_instance(self, instance_id: str) -> dict[str, Any]:
        """Stop an instance: close its forward, then ask EC2 to stop it."""
        return await self._shut_down(
            instance_id,
            "stop",
            Phase.STOPPING,
            self.backend.stop,
            refused={Phase.STOPPED, Phase.STOPPING, Phase.LAUNCHING},
        )

    async def terminate(self, instance_id: str) -> dict[str, Any]:
        """Terminate an instance: everything on its disk is lost."""
        return await self._shut_down(
            instance_id, "terminate", Phase.TERMINATING, self.backend.terminate, refused=set()
        )

    async def start_instance(self, instance_id: str) -> dict[str, Any]:
        """Start a stopped instance and bring its notebook server back."""
        record = self.get(instance_id)
        retry = record.phase == Phase.FAILED and record.ec2_state == "stopped"
        if record.phase != Phase.STOPPED and not retry:
            raise ConflictError(
                f"Instance {record.id} is {record.phase.value}; only a stopped instance can start."
            )
        async with self._action(record):
            await self._thread(self.backend.start, [record.id], record.region)
            record.error = None
            record.ec2_state = "pending"
            self._set_phase(record, Phase.BOOTING, "Starting the instance.")
            self._run(
                record,
                self._bring_up(record, self._profile_of(record), fresh=not record.provisioned),
            )
        return self.to_json(record)

    async def reconnect(self, instance_id: str) -> dict[str, Any]:
        """Re-establish the forward (and the server) of a running instance."""
        record = self.get(instance_id)
        if record.phase not in (Phase.READY, Phase.DEGRADED, Phase.FAILED) or (
            record.ec2_state != "running"
        ):
            raise ConflictError(
                f"Instance {record.id} is {record.phase.value}; reconnect needs a running instance."
            )
        async with self._action(record):
            await self._cancel_task(record)
            await self._close_forward(record)
            record.error = None
            self._set_phase(record, Phase.CONNECTING, "Reconnecting.")
            self._run(
                record,
                self._bring_up(record, self._profile_of(record), fresh=not record.provisioned),
            )
        return self.to_json(record)

    async def _shut_down(
        self,
        instance_id: str,
        action: str,
        phase: Phase,
        call: Callable[..., Any],
        refused: set[Phase],
    ) -> dict[str, Any]:
        """Stop or terminate: cancel the task, close the forward, then ask EC2."""
        record = self.get(instance_id)
        if record.phase in refused | {Phase.TERMINATING, Phase.TERMINATED}:
            raise ConflictError(
                f"Instance {record.id} is {record.phase.value}; cannot {action} it now."
            )
        async with self._action(record):
            await self._cancel_task(record)
            self._set_phase(record, phase, f"Asking EC2 to {action} the instance.")
            await self._close_forward(record)
            try:
                await self._thread(call, [record.id], record.region)
            except EC2LauncherError as err:
                self._fail(record, action, err.message)
                raise
        self._changed.set()
        return self.to_json(record)

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
            self._set_phase(record, Phase.CONNECTING, f"Connecting over SSH to {record.address}.")
            target = await self._thread(self._target, record)
            step = "provision"
            self._set_phase(record, Phase.PROVISIONING, "Setting up Jupyter on the instance.")
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
                )
            )
            record.remote_port, record.token = result.port, result.token
            record.provisioned = True
            if not result.changed:
                self._log(record, "provision", "Every setup step was already done.")
            self._save(record)
            step = "forward"
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

    async def _reattach(self, record: InstanceRecord) -> None:
        """After a restart: a provisioned, running instance gets its forward back, nothing more."""
        try:
            self._set_phase(record, Phase.CONNECTING, "Re-attaching after a restart.")
            self._log(record, "reattach", "Re-attached after a restart; provisioning not re-run.")
            target = await self._thread(self._target, record)
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
                raise _StepError("boot", f"The instance is {record.ec2_state} instead of running.")
            if time.monotonic() > deadline:
                raise _StepError(
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
            await self._thread(self.tunnels.close, record.id)
            record.tunnel_state = None

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

    # -- the poller ------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        last_poll = 0.0
        while not self._closing:
            busy = any(r.phase in TRANSITIONAL for r in self.records.values())
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
        for region in self._regions():
            found = await self._thread(self.backend.list_instances, region)
            self.aws_calls += 1
            seen = {inst.instance_id: inst for inst in found}
            for inst in found:
                record = self.records.get(inst.instance_id)
                if record is None:
                    if inst.state != "terminated" and inst.launch_id not in self._launching:
                        await self._adopt(inst)
                    continue
                self._reconcile(record, inst)
            for record in self.records.values():
                if (
                    record.region == region
                    and record.id not in seen
                    and record.phase not in (Phase.TERMINATED,)
                ):
                    # Gone from EC2's answers: terminated long ago.
                    record.ec2_state = "terminated"
                    self._reconcile_terminated(record)
        await self._check_idle()

    def _reconcile(self, record: InstanceRecord, inst: Any) -> None:
        record.address = inst.public_ip or inst.public_dns or inst.private_ip
        if inst.state == record.ec2_state:
            return
        previous, record.ec2_state = record.ec2_state, inst.state
        record.state_changed.set()
        self._log(
            record,
            "ec2",
            f"EC2 state {previous} → {inst.state}"
            + (f" ({inst.state_reason})" if inst.state_reason else ""),
        )
        if inst.state == "terminated":
            self._reconcile_terminated(record)
        elif inst.state == "stopped":
            self._reconcile_stopped(record, inst.state_reason)
        elif inst.state in ("stopping", "shutting-down") and record.phase in (
            Phase.READY,
            Phase.DEGRADED,
        ):
            self._set_phase(
                record, Phase.STOPPING, inst.state_reason or "The instance is stopping."
            )
        elif inst.state == "running" and record.phase == Phase.STOPPED:
            # Started outside the extension: bring the notebook server back.
            self._set_phase(record, Phase.BOOTING, "Started outside jupyter-ec2.")
            self._run(
                record,
                self._bring_up(record, self._profile_of(record), fresh=not record.provisioned),
            )

    def _reconcile_stopped(self, record: InstanceRecord, reason: str | None) -> None:
        if record.phase == Phase.FAILED:
            return
        if record.task and not record.task.done():
            record.task.cancel()
        if record.tunnel_state is not None:
            self._run_detached(self._thread(self.tunnels.close, record.id))
            record.tunnel_state = None
        self._set_phase(record, Phase.STOPPED, reason or "Stopped.")

    def _reconcile_terminated(self, record: InstanceRecord) -> None:
        if record.task and not record.task.done():
            record.task.cancel()
        if record.tunnel_state is not None:
            self._run_detached(self._thread(self.tunnels.close, record.id))
            record.tunnel_state = None
        if record.phase != Phase.TERMINATED:
            self._set_phase(record, Phase.TERMINATED, "Terminated.")
            self._log(record, "ec2", "Terminated; its state files are removed.")
        with contextlib.suppress(EC2LauncherError, OSError):
            self.store.forget(record.id)

    async def _adopt(self, inst: Any) -> None:
        """A managed instance this server has no record of: re-attach or show it."""
        saved = self.store.read_json(inst.instance_id) or {}
        record = InstanceRecord(
            id=inst.instance_id,
            name=saved.get("name") or inst.name or inst.instance_id,
            profile=saved.get("profile") or inst.profile or "",
            region=inst.region,
            instance_type=inst.instance_type,
            launch_id=saved.get("launch_id") or inst.launch_id or "",
            ec2_state=inst.state,
            launched_at=saved.get("launched_at")
            or (inst.launch_time.isoformat(timespec="seconds") if inst.launch_time else _now()),
            remote_port=saved.get("remote_port"),
            token=saved.get("token"),
            local_port=saved.get("local_port"),
            provisioned=bool(saved.get("provisioned")),
            address=inst.public_ip or inst.public_dns or inst.private_ip,
        )
        self.records[record.id] = record
        self._run_detached(self._look_up_price(record, inst.spot))
        if inst.launch_id:
            # A launch that crashed between RunInstances and saving its record.
            self.store.delete_json(f"launch-{inst.launch_id}")
        if saved.get("error"):
            record.error = saved["error"]
            self._set_phase(record, Phase.FAILED, saved["error"].get("message", "Failed."))
        elif inst.state in ("stopped", "stopping"):
            self._set_phase(record, Phase.STOPPED, inst.state_reason or "Stopped.")
        elif inst.state in ("pending", "running"):
            if record.provisioned and record.token and inst.state == "running":
                self._run(record, self._reattach(record))
            else:
                self._log(record, "adopt", "Found by its tags; its setup had not finished.")
                self._run(record, self._bring_up(record, self._profile_of(record), fresh=True))
        elif inst.state == "shutting-down":
            self._set_phase(record, Phase.TERMINATING, "Terminating.")
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
                record.idle_message = idle_message(status)
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
            raise _StepError(
                "connect",
                "The instance has no IP address: it needs a public IP, or an ssh_config "
                "ProxyJump for a private subnet.",
            )
        host_key = self.store.pinned_host_key(record.id)
        if host_key is None:
            raise _StepError(
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

    def _progress_callback(self, record: InstanceRecord) -> Callable[[str, int, str], None]:
        loop = self._loop or asyncio.get_running_loop()

        def progress(step: str, percent: int, text: str) -> None:
            loop.call_soon_threadsafe(self._on_progress, record, step, percent, text)

        return progress

    def _on_progress(self, record: InstanceRecord, step: str, percent: int, text: str) -> None:
        if record.phase not in (Phase.PROVISIONING, Phase.STARTING, Phase.CONNECTING):
            return
        if step in ("service", "ready") and record.phase == Phase.PROVISIONING:
            record.phase = Phase.STARTING
        if record.phase == Phase.CONNECTING and step not in ("connect",):
            record.phase = Phase.PROVISIONING
        record.progress = max(record.progress, min(95, 30 + int(percent * 0.6)))
        if text:
            record.message = text
            self._log(record, step, text)
        record.updated_at = _now()

    def _on_tunnel_change(self, instance_id: str, state: str) -> None:
        """Called by the forward from its own thread when its state changes."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(
            self._apply_tunnel_state, instance_id, str(getattr(state, "value", state))
        )

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

    def _set_phase(self, record: InstanceRecord, phase: Phase, message: str) -> None:
        record.phase = phase
        record.message = message
        if phase in PHASE_PROGRESS:
            record.progress = (
                max(record.progress, PHASE_PROGRESS[phase])
                if phase not in (Phase.LAUNCHING, Phase.BOOTING)
                else PHASE_PROGRESS[phase]
            )
        record.updated_at = _now()
        if phase != Phase.READY:
            record.idle_message = ""
        self._changed.set()

    def _fail(self, record: InstanceRecord, step: str, message: str) -> None:
        record.error = {"step": step, "message": message}
        self._set_phase(record, Phase.FAILED, f"Failed at {step}: {message}")
        self._log(record, step, f"FAILED: {message}")
        self._save(record)

    def _log(self, record: InstanceRecord, step: str, text: str) -> None:
        for line in str(text).splitlines() or [""]:
            record.log.append(LogLine(record.next_seq, _now(), step, line))
            record.next_seq += 1
        if len(record.log) > MAX_LOG_LINES:
            del record.log[: len(record.log) - MAX_LOG_LINES]

    def _save(self, record: InstanceRecord) -> None:
        if record.phase == Phase.TERMINATED:
            return
        try:
            self.store.write_json_secret(record.id, record.persistent())
        except (EC2LauncherError, OSError) as err:
            self.log.warning("jupyter-ec2: could not save the state of %s: %s", record.id, err)

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


class _StepError(EC2LauncherError):
    """A lifecycle step failed for a reason the manager itself found."""

    status = 502

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


def idle_message(status: Any) -> str:
    """'Ready · idle, stops in N min' from the watchdog's status, or '' when not idle or off."""
    if status is None:
        return ""
    minutes = status.minutes_left()
    if minutes is None or status.busy or status.idle_since is None:
        return ""
    return f"Ready · idle, stops in {max(0, round(minutes))} min"


__all__ = ["InstanceRecord", "LaunchManager", "idle_message"]
