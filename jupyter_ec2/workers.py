"""Dask workers next to a notebook instance: launched, provisioned, followed and re-discovered.

:class:`WorkerPool` belongs to the :class:`~jupyter_ec2.manager.LaunchManager` and keeps one
:class:`Cluster` per notebook instance that has workers. Workers are EC2 instances launched like
the notebook instance (its image, subnet and key pair, the same hardening) by
:meth:`~jupyter_ec2.aws.EC2Backend.launch_workers`, in a security group that admits only its own
members and SSH from this machine, and tagged ``jupyter-ec2:worker-of = <notebook id>`` so that
a restarted server finds them again. Each is provisioned with the notebook's environment (the
same ``setup.sh``, idle auto-stop off: the notebook instance decides) plus ``distributed``, and
runs Dask's own ``dask worker`` pointed at the ``dask scheduler`` on the notebook instance's
private address (:mod:`jupyter_ec2.provision.dask`).

Workers follow their notebook instance: the pool subscribes to the manager's phase events and
stops, starts or terminates them when the notebook instance does, also when the instance stopped
itself (idle auto-stop: the poller sees it stopping). A worker that fails is reported in the
Instance's ``workers`` and terminated, and never fails the notebook instance. The dashboard is
forwarded from the notebook instance's loopback and served by the proxy under
``{remote path}dask/`` (``docs/dask.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jupyter_server.utils import url_path_join

from . import lifecycle as lc
from .aws import worker_of
from .errors import ConflictError, EC2LauncherError, ValidationError
from .models import MAX_WORKERS, Phase, validate_workers
from .provision.dask import (
    DASHBOARD_PORT,
    build_dask_params,
    dashboard_prefix,
)

if TYPE_CHECKING:
    from .manager import LaunchManager
    from .reconcile import InstanceRecord

#: Worker phases (the ``phase`` of an entry of the Instance's ``workers``).
WORKER_PHASES = (
    "launching",
    "booting",
    "provisioning",
    "ready",
    "stopping",
    "stopped",
    "failed",
    "terminating",
    "terminated",
)
_LIVE_EC2 = frozenset({"pending", "running"})
#: The key of the dashboard's forward beside the notebook's own (``TunnelManager`` keys).
DASHBOARD_SUFFIX = "/dask"


def dashboard_key(notebook_id: str) -> str:
    """The forward key of a notebook instance's Dask dashboard."""
    return f"{notebook_id}-dask"


@dataclass
class Worker:
    """One worker instance as the pool knows it."""

    id: str
    instance_type: str
    phase: str = "launching"
    ec2_state: str = "pending"
    address: str | None = None
    private_ip: str | None = None
    error: str | None = None
    provisioned: bool = False

    def to_json(self) -> dict[str, Any]:
        """The entry of the Instance's ``workers``."""
        entry: dict[str, Any] = {
            "id": self.id,
            "phase": self.phase,
            "instance_type": self.instance_type,
        }
        if self.error:
            entry["error"] = self.error
        return entry


@dataclass
class Cluster:
    """The Dask cluster of one notebook instance."""

    notebook_id: str
    region: str
    workers: dict[str, Worker] = field(default_factory=dict)
    scheduler: str | None = None
    profile_applied: bool = False
    task: asyncio.Task | None = None
    again: bool = False
    #: What a restarted server read back of each worker (``{id: {"provisioned": bool}}``).
    saved: dict[str, Any] = field(default_factory=dict)

    def live(self) -> list[Worker]:
        """Workers not terminated or terminating."""
        return [w for w in self.workers.values() if w.phase not in ("terminated", "terminating")]

    def persistent(self) -> dict[str, Any]:
        """What a restarted server needs besides the tags."""
        return {
            "scheduler": self.scheduler,
            "profile_applied": self.profile_applied,
            "workers": {w.id: {"provisioned": w.provisioned} for w in self.live()},
        }


class WorkerPool:
    """The Dask workers of every notebook instance (owned by the manager, on its event loop)."""

    #: Seconds a worker may take to reach ``running``.
    boot_timeout = 600.0
    #: Seconds ``dask.sh`` waits for the scheduler or a worker's registration.
    ready_timeout = 180.0

    def __init__(self, manager: LaunchManager):
        self.manager = manager
        self.clusters: dict[str, Cluster] = {}
        self._prices: dict[tuple[str, str], float | None] = {}
        manager.subscribe(self._on_event)

    @property
    def log(self) -> Any:
        """The manager's logger."""
        return self.manager.log

    # -- what the API shows ------------------------------------------------------------------

    def instance_fields(self, record: InstanceRecord) -> dict[str, Any]:
        """The Instance's ``workers`` and ``dask`` fields."""
        cluster = self.clusters.get(record.id)
        if cluster is None:
            return {"workers": [], "dask": None}
        workers = [w.to_json() for w in cluster.workers.values() if w.phase != "terminated"]
        dask = None
        if cluster.scheduler and cluster.live():
            base = self.manager.remote_base_url(record.id)
            dask = {
                "scheduler": cluster.scheduler,
                "dashboard_url": url_path_join(dashboard_prefix(base), "status"),
            }
        return {"workers": workers, "dask": dask}

    def dashboard_endpoint(self, notebook_id: str) -> tuple[int, str, str] | None:
        """(local port, remote token, state) of the dashboard's forward, for the proxy."""
        record = self.manager.records.get(notebook_id)
        cluster = self.clusters.get(notebook_id)
        if record is None or cluster is None or not cluster.scheduler or record.token is None:
            return None
        if record.phase not in (Phase.READY, Phase.DEGRADED):
            return None
        forward = self.manager.tunnels.get(dashboard_key(notebook_id))
        if forward is None:
            return None
        return forward.local_port, record.token, str(forward.state.value)

    # -- actions ---------------------------------------------------------------------------------

    async def add(self, notebook_id: str, body: Any) -> dict[str, Any]:
        """``POST instances/{id}/workers``: launch workers; they come up in the background."""
        spec = validate_workers(body)
        record = self.manager.get(notebook_id)
        lc.check_action(record.id, self.manager.state_of(record), "workers")
        await self._launch(record, spec["count"], spec.get("instance_type"))
        return self.manager.to_json(record)

    async def remove(self, notebook_id: str) -> dict[str, Any]:
        """``DELETE instances/{id}/workers``: terminate every worker of the instance."""
        record = self.manager.get(notebook_id)
        cluster = self.clusters.get(record.id)
        if cluster is not None:
            cluster.profile_applied = True  # removed on purpose: a restart adds none again
            await self._terminate(cluster)
        return self.manager.to_json(record)

    async def _launch(self, record: InstanceRecord, count: int, instance_type: str | None) -> None:
        manager = self.manager
        cluster = self._cluster(record.id, record.region)
        if len(cluster.live()) + count > MAX_WORKERS:
            raise ConflictError(
                f"{record.id} has {len(cluster.live())} workers; {count} more would pass the "
                f"limit of {MAX_WORKERS}. Remove workers first."
            )
        manager.cost_keeper.check_budget()
        worker_type = instance_type or record.instance_type
        await manager.cost_keeper.check_hourly_limit(record.region, worker_type, False)
        profile = manager._profile_of(record)
        try:
            launched = await manager._thread(
                functools.partial(
                    manager.backend.launch_workers,
                    record.id,
                    count,
                    worker_type,
                    launch_id=str(uuid.uuid4()),
                    volume_gb=profile.volume_gb,
                    region=record.region,
                )
            )
        except ValidationError as err:
            if err.field == "instance_type":
                raise ValidationError("instance_type", err.message) from None
            raise
        now = manager.clock()
        for worker_id in launched.worker_ids:
            cluster.workers[worker_id] = Worker(worker_id, launched.instance_type)
            manager.costs.entry(
                worker_id, record.region, launched.instance_type, volume_gb=profile.volume_gb,
                now=now,
            )  # fmt: skip
            manager.costs.observe(worker_id, "pending", now)
        manager._log(
            record,
            "workers",
            f"Launched {len(launched.worker_ids)} Dask worker(s) ({launched.instance_type}): "
            + ", ".join(launched.worker_ids),
        )
        self._look_up_price(record.region, launched.instance_type)
        self._save(cluster)
        self._ensure(cluster)

    # -- following the notebook instance ---------------------------------------------------------

    def _on_event(self, event: lc.LifecycleEvent) -> None:
        """Workers follow their notebook instance's phase (called on the event loop)."""
        if event.kind != "phase" or event.instance_id is None or event.old == event.phase:
            return
        record = self.manager.records.get(event.instance_id)
        if record is None:
            return
        cluster = self.clusters.get(record.id)
        phase = event.phase
        if phase == Phase.READY:
            profile = self.manager.profiles.get(record.profile)
            wanted = profile.workers if profile is not None else None
            if wanted and (cluster is None or not (cluster.profile_applied or cluster.workers)):
                cluster = self._cluster(record.id, record.region)
                cluster.profile_applied = True
                self._spawn(self._launch_profile_workers(record, wanted))
            elif cluster is not None and cluster.live():
                self._ensure(cluster)
        elif cluster is None:
            return
        elif phase in (Phase.TERMINATING, Phase.TERMINATED):
            self._spawn(self._terminate(cluster, forget=True))
        elif phase in (Phase.STOPPING, Phase.STOPPED, Phase.RESIZING) or (
            phase == Phase.FAILED and self.manager.on_failure != "keep"
        ):
            self._spawn(self._stop(cluster))

    async def _launch_profile_workers(self, record: InstanceRecord, wanted: dict) -> None:
        try:
            await self._launch(record, wanted["count"], wanted.get("instance_type"))
        except EC2LauncherError as err:
            self.manager._log(record, "workers", f"The profile's workers were not launched: "
                              f"{err.message}")  # fmt: skip

    async def _stop(self, cluster: Cluster) -> None:
        """Stop every running worker (the notebook instance stopped or is stopping)."""
        await self._cancel(cluster)
        await self._close_dashboard(cluster.notebook_id)
        running = [w for w in cluster.live() if w.ec2_state in _LIVE_EC2]
        if not running:
            return
        for worker in running:
            worker.phase = "stopping"
        try:
            await self.manager._thread(
                self.manager.backend.stop, [w.id for w in running], cluster.region
            )
        except EC2LauncherError as err:
            self._note(cluster, f"Could not stop the workers: {err.message}")
        self.manager._changed.set()

    async def _terminate(self, cluster: Cluster, *, forget: bool = False) -> None:
        """Terminate every worker; with ``forget`` also the cluster group, once they are gone."""
        await self._cancel(cluster)
        await self._close_dashboard(cluster.notebook_id)
        live = []
        for worker in cluster.live():
            if worker.ec2_state == "terminated":  # a failed one, terminated already
                worker.phase = "terminated"
            else:
                worker.phase = "terminating"
                live.append(worker)
        if live:
            try:
                await self.manager._thread(
                    self.manager.backend.terminate, [w.id for w in live], cluster.region
                )
                self._note(cluster, f"Terminating {len(live)} Dask worker(s).")
            except EC2LauncherError as err:
                self._note(cluster, f"Could not terminate the workers: {err.message}")
        self._save(cluster)
        self.manager._changed.set()
        if forget:
            self._spawn(self._delete_group(cluster))

    async def _delete_group(self, cluster: Cluster) -> None:
        """Remove the cluster group once no instance uses it (a few tries, then leave it)."""
        for delay in (5, 10, 20, 40, 80):
            await asyncio.sleep(delay)
            try:
                gone = await self.manager._thread(
                    self.manager.backend.delete_cluster_group, cluster.notebook_id, cluster.region
                )
            except EC2LauncherError as err:
                self.log.warning("jupyter-ec2: cluster group not deleted: %s", err.message)
                return
            if gone:
                self.clusters.pop(cluster.notebook_id, None)
                self.manager._write(
                    self.manager.store.delete_json, f"workers-{cluster.notebook_id}"
                )
                return

    # -- bringing the cluster up -----------------------------------------------------------------

    def _ensure(self, cluster: Cluster) -> None:
        """Bring the cluster up in one task per cluster (asked again while running: rerun)."""
        if cluster.task is not None and not cluster.task.done():
            cluster.again = True
            return
        cluster.again = False
        cluster.task = asyncio.create_task(
            self._bring_up(cluster), name=f"jupyter-ec2-workers-{cluster.notebook_id}"
        )

    async def _bring_up(self, cluster: Cluster) -> None:
        manager = self.manager
        record = manager.records.get(cluster.notebook_id)
        if record is None or record.phase != Phase.READY:
            return
        try:
            stopped = [w for w in cluster.live() if w.ec2_state in ("stopped", "stopping")]
            if stopped:
                await manager._thread(
                    manager.backend.start, [w.id for w in stopped], cluster.region
                )
                for worker in stopped:
                    worker.phase, worker.ec2_state = "booting", "pending"
                manager._changed.set()
        except EC2LauncherError as err:
            self._note(cluster, f"The workers could not be started: {err.message}")
        # The scheduler is set up while the workers boot and get their environment: a worker
        # waits for it only before its own dask worker service.
        scheduler = asyncio.ensure_future(self._ensure_scheduler(cluster, record))
        pending = [w for w in cluster.live() if w.phase not in ("ready", "failed")]
        try:
            await asyncio.gather(
                *(self._bring_up_worker(cluster, w, scheduler) for w in pending),
                asyncio.shield(scheduler),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            scheduler.cancel()
            raise
        failure = None if scheduler.cancelled() else scheduler.exception()
        if isinstance(failure, EC2LauncherError):
            self._note(cluster, f"The Dask scheduler could not be set up: {failure.message}")
            for worker in cluster.live():
                if worker.phase not in ("failed", "terminating", "terminated"):
                    await self._fail_worker(cluster, worker, f"No scheduler: {failure.message}")
        self._save(cluster)
        if cluster.again:
            self._ensure(cluster)

    async def _ensure_scheduler(self, cluster: Cluster, record: InstanceRecord) -> None:
        manager = self.manager
        inst = (await manager._thread(manager.backend.owned, [record.id], record.region))[0]
        if not inst.private_ip:
            raise EC2LauncherError(f"{record.id} has no private address.")
        await manager._thread(manager.backend.ensure_cluster_group, record.id, record.region)
        target = await manager._thread(manager._target, record)
        profile = manager._profile_of(record)
        params = build_dask_params(
            role="scheduler",
            instance_id=record.id,
            notebook_user=manager.provisioner.notebook_user,
            environment=profile.environment,
            host=inst.private_ip,
            dashboard_path=dashboard_prefix(manager.remote_base_url(record.id)),
            jupyter_port=record.remote_port,
            wheel_dir=manager.provisioner.wheel_dir,
            ready_timeout=self.ready_timeout,
        )
        result = await manager._thread(manager.provisioner.setup_dask, target, params)
        if cluster.scheduler != result.scheduler:
            manager._log(record, "dask", f"Dask scheduler at {result.scheduler}.")
        cluster.scheduler = result.scheduler
        await manager._thread(
            functools.partial(
                manager.tunnels.open,
                dashboard_key(record.id),
                target,
                DASHBOARD_PORT,
                ssh_config_file=manager.provisioner.ssh_config_file,
            )
        )
        self._save(cluster)

    async def _bring_up_worker(
        self, cluster: Cluster, worker: Worker, scheduler: asyncio.Future
    ) -> None:
        manager = self.manager
        record = manager.records.get(cluster.notebook_id)
        if record is None:
            return
        try:
            deadline = time.monotonic() + self.boot_timeout
            if worker.phase == "launching":
                worker.phase = "booting"
            while worker.ec2_state != "running":
                if worker.ec2_state in ("stopped", "terminated", "shutting-down"):
                    raise EC2LauncherError(f"EC2 reports it {worker.ec2_state}.")
                if time.monotonic() > deadline:
                    raise EC2LauncherError(f"not running after {self.boot_timeout:.0f} s.")
                manager._changed.set()
                await asyncio.sleep(manager.poll_min_gap)
            worker.phase = "provisioning"
            target = await manager._thread(self._worker_target, worker, cluster.region)
            profile = manager._profile_of(record)
            await manager._thread(
                functools.partial(
                    manager.provisioner.provision,
                    target,
                    worker.id,
                    manager.base_url,
                    None,
                    environment=profile.environment,
                    idle_stop_minutes=0,  # the notebook instance decides; workers follow it
                    fast=worker.provisioned,
                )
            )
            try:
                await asyncio.shield(scheduler)
            except EC2LauncherError as err:
                raise EC2LauncherError(f"No scheduler: {err.message}") from None
            params = build_dask_params(
                role="worker",
                instance_id=worker.id,
                notebook_user=manager.provisioner.notebook_user,
                environment=profile.environment,
                host=worker.private_ip or "",
                scheduler_address=cluster.scheduler,
                wheel_dir=manager.provisioner.wheel_dir,
                ready_timeout=self.ready_timeout,
            )
            target = await manager._thread(self._worker_target, worker, cluster.region)
            await manager._thread(manager.provisioner.setup_dask, target, params)
            worker.provisioned = True
            worker.phase, worker.error = "ready", None
            manager._log(record, "workers", f"Dask worker {worker.id} is registered.")
        except asyncio.CancelledError:
            raise
        except EC2LauncherError as err:
            await self._fail_worker(cluster, worker, err.message)
        except Exception as err:  # noqa: BLE001 - a bug must not leave a worker running unseen
            self.log.exception("jupyter-ec2: bringing up worker %s failed", worker.id)
            await self._fail_worker(cluster, worker, f"Unexpected error: {err}")

    def _worker_target(self, worker: Worker, region: str) -> Any:
        """SSH target of a worker (in a thread): its address and pinned host key."""
        from .provision.ssh import SSHTarget

        manager = self.manager
        if worker.address is None or worker.private_ip is None:
            inst = manager.backend.owned([worker.id], region)[0]
            worker.address = inst.public_ip or inst.public_dns or inst.private_ip
            worker.private_ip = inst.private_ip
        host_key = manager.store.pinned_host_key(worker.id)
        if worker.address is None or host_key is None:
            raise EC2LauncherError("the worker has no address or no pinned host key.")
        return SSHTarget(
            host=worker.address,
            host_public_key=host_key,
            client_key=manager.store.load_or_create_key_pair(),
        )

    async def _fail_worker(self, cluster: Cluster, worker: Worker, message: str) -> None:
        """Report a failed worker and terminate it: no worker is left running by a failure."""
        worker.phase, worker.error = "failed", message[:300]
        self._note(cluster, f"Dask worker {worker.id} failed: {message} It is terminated.")
        try:
            await self.manager._thread(self.manager.backend.terminate, [worker.id], cluster.region)
        except EC2LauncherError as err:
            self._note(cluster, f"Could not terminate the failed worker {worker.id}: {err.message}")
        self._save(cluster)

    # -- what EC2 reports (the poller hands worker instances over) -------------------------------

    async def take(self, found: list[Any]) -> list[Any]:
        """Observe the worker instances of a describe answer; return the notebook instances."""
        notebooks = []
        for inst in found:
            notebook_id = worker_of(inst)
            if notebook_id is None:
                notebooks.append(inst)
                continue
            cluster = self.clusters.get(notebook_id)
            if cluster is None:
                if inst.state == "terminated":
                    continue
                cluster = await self._rediscover(notebook_id, inst.region)
            self._observe(cluster, inst)
        return notebooks

    async def _rediscover(self, notebook_id: str, region: str) -> Cluster:
        """A cluster found by tags after a restart: its saved state, if any, comes back."""
        cluster = self._cluster(notebook_id, region)
        saved = await self.manager._thread(self.manager.store.read_json, f"workers-{notebook_id}")
        saved = saved if isinstance(saved, dict) else {}
        cluster.scheduler = saved.get("scheduler")
        cluster.profile_applied = True  # its workers exist: the profile's were launched
        cluster.saved = dict(saved.get("workers") or {})
        return cluster

    def _observe(self, cluster: Cluster, inst: Any) -> None:
        manager = self.manager
        worker = cluster.workers.get(inst.instance_id)
        if worker is None:
            if inst.state == "terminated":
                return
            saved = cluster.saved.get(inst.instance_id) or {}
            worker = Worker(inst.instance_id, inst.instance_type, phase="booting")
            worker.provisioned = bool(saved.get("provisioned"))
            if inst.state == "running" and worker.provisioned:
                worker.phase = "ready"
            cluster.workers[worker.id] = worker
            self._look_up_price(cluster.region, inst.instance_type)
            record = manager.records.get(cluster.notebook_id)
            if record is not None:
                manager._log(record, "workers", f"Found Dask worker {worker.id} by its tags.")
        worker.address = inst.public_ip or inst.public_dns or inst.private_ip
        worker.private_ip = inst.private_ip
        now = manager.clock()
        manager.costs.entry(worker.id, cluster.region, worker.instance_type, now=now)
        changed = manager.costs.observe(worker.id, inst.state, now)
        price = self._prices.get((cluster.region, worker.instance_type))
        changed |= manager.costs.set_hourly(worker.id, price, now)
        if changed:
            manager.cost_keeper.save()
        if inst.state == "terminated" and worker.phase == "terminating":
            worker.phase = "terminated"
            self._save(cluster)
        if inst.state == worker.ec2_state:
            return
        worker.ec2_state = inst.state
        if inst.state == "terminated":
            if worker.phase != "failed":  # a failed one stays reported until it is removed
                worker.phase = "terminated"
            self._save(cluster)
        elif inst.state == "stopped" and worker.phase not in ("failed", "terminating"):
            worker.phase = "stopped"
        elif inst.state == "stopping" and worker.phase not in ("failed", "terminating"):
            worker.phase = "stopping"

    # -- helpers ---------------------------------------------------------------------------------

    def _cluster(self, notebook_id: str, region: str) -> Cluster:
        cluster = self.clusters.get(notebook_id)
        if cluster is None:
            cluster = self.clusters[notebook_id] = Cluster(notebook_id, region)
        return cluster

    def _save(self, cluster: Cluster) -> None:
        self.manager._write(
            self.manager.store.write_json_secret,
            f"workers-{cluster.notebook_id}",
            cluster.persistent(),
        )

    def _note(self, cluster: Cluster, text: str) -> None:
        record = self.manager.records.get(cluster.notebook_id)
        if record is not None:
            self.manager._log(record, "workers", text)
        else:
            self.log.info("jupyter-ec2: %s: %s", cluster.notebook_id, text)

    def _look_up_price(self, region: str, instance_type: str) -> None:
        key = (region, instance_type)
        if key in self._prices:
            return
        self._prices[key] = None

        async def look_up() -> None:
            with contextlib.suppress(EC2LauncherError):
                self._prices[key] = await self.manager._thread(
                    self.manager.prices.hourly_usd, region, instance_type, False
                )

        self._spawn(look_up())

    async def _cancel(self, cluster: Cluster) -> None:
        task, cluster.task = cluster.task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _close_dashboard(self, notebook_id: str) -> None:
        if self.manager.tunnels.get(dashboard_key(notebook_id)) is not None:
            await self.manager._thread(self.manager.tunnels.close, dashboard_key(notebook_id))

    def _spawn(self, coro: Any) -> None:
        self.manager._run_detached(coro)

    async def close(self) -> None:
        """Cancel every cluster task (the server stops; the workers keep running)."""
        for cluster in self.clusters.values():
            await self._cancel(cluster)


__all__ = ["DASHBOARD_SUFFIX", "WORKER_PHASES", "Cluster", "Worker", "WorkerPool", "dashboard_key"]
