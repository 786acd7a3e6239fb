"""What the managed instances have cost so far: an estimate from the EC2 states the manager saw.

The ledger and the budget rules are pure: no I/O, no clock of their own (callers pass epoch
seconds in). :class:`CostKeeper`, which the manager owns (``manager.cost_keeper``), is the
asynchronous side: it feeds the ledger the EC2 states of each phase change and each poll, looks
up gp3 prices in a worker thread, persists the ledger, warns at the budget's threshold, refuses
launches over the budget or the hourly limit, and answers ``GET costs``.

A :class:`CostLedger` keeps, per instance, the intervals it was ``running`` (each with the
hourly price that applied) and the time its root volume existed (from launch to termination, so
a stopped instance keeps paying for its disk). The cost of a period is

    Σ running seconds × hourly price / 3600  +  volume GB × gp3 $/GB-month × disk seconds / month

with AWS's billing month of 730 hours. A price that is not known gives ``None`` ("unknown"),
never 0: an unknown part makes the whole figure unknown, while :meth:`CostLedger.known_usd`
gives the lower bound the budget guard may still act on. The ledger is plain JSON
(:meth:`CostLedger.to_json`, :meth:`CostLedger.from_json`) so the manager persists it in the state
store and a restart keeps the history. Every figure is an estimate: AWS bills per second with
a one-minute minimum, charges taxes, and may price differently than its Price List says.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConflictError, EC2LauncherError
from .models import Phase

if TYPE_CHECKING:
    from .lifecycle import LifecycleEvent
    from .manager import LaunchManager

#: Seconds in AWS's billing month for GB-month prices (730 hours).
MONTH_SECONDS = 730 * 3600.0
#: EC2 states in which the compute is billed (on-demand and spot alike).
BILLED_STATES = frozenset({"running"})
#: The share of the monthly budget at which a warning is given.
BUDGET_WARNING_FRACTION = 0.8
#: Entries whose disk went away before the previous month began are dropped when saved.
_KEEP_MONTHS = 2


def month_start(now: float) -> float:
    """The epoch second at which the UTC calendar month of ``now`` began."""
    day = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    return calendar.timegm((day.year, day.month, 1, 0, 0, 0))


def _overlap(start: float, end: float, t0: float, t1: float) -> float:
    return max(0.0, min(end, t1) - max(start, t0))


def _money(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


@dataclass
class CostEntry:
    """The billing history of one instance."""

    id: str
    region: str
    instance_type: str
    volume_gb: int | None = None
    gb_month_usd: float | None = None
    hourly_usd: float | None = None  # the price that applies now
    disk_since: float | None = None  # launch (or first sighting)
    disk_until: float | None = None  # termination
    #: Running intervals ``[start, end or None, hourly price or None]``.
    intervals: list[list[Any]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """Whether a running interval is open."""
        return bool(self.intervals) and self.intervals[-1][1] is None

    @property
    def terminated(self) -> bool:
        """Whether its disk is gone."""
        return self.disk_until is not None

    def compute_usd(self, t0: float, t1: float) -> float | None:
        """What running cost between ``t0`` and ``t1`` (None if a price that counts is unknown)."""
        total = 0.0
        for start, end, hourly in self.intervals:
            seconds = _overlap(start, t1 if end is None else end, t0, t1)
            if seconds <= 0:
                continue
            if hourly is None:
                return None
            total += seconds * hourly / 3600.0
        return total

    def disk_usd(self, t0: float, t1: float) -> float | None:
        """What the root volume cost between ``t0`` and ``t1`` (None if its price is unknown)."""
        if self.disk_since is None:
            return 0.0
        end = t1 if self.disk_until is None else self.disk_until
        seconds = _overlap(self.disk_since, end, t0, t1)
        if seconds <= 0:
            return 0.0
        monthly = self.disk_monthly_usd()
        return None if monthly is None else monthly * seconds / MONTH_SECONDS

    def disk_monthly_usd(self) -> float | None:
        """What the root volume costs a month (what a stopped instance keeps paying)."""
        if self.volume_gb is None or self.gb_month_usd is None:
            return None
        return self.volume_gb * self.gb_month_usd

    def usd(self, t0: float, t1: float) -> float | None:
        """Compute and disk between ``t0`` and ``t1``, or None when a part is unknown."""
        compute, disk = self.compute_usd(t0, t1), self.disk_usd(t0, t1)
        return None if compute is None or disk is None else compute + disk

    def known_usd(self, t0: float, t1: float) -> float:
        """The parts of :meth:`usd` whose price is known (a lower bound)."""
        total = 0.0
        for start, end, hourly in self.intervals:
            if hourly is not None:
                total += _overlap(start, t1 if end is None else end, t0, t1) * hourly / 3600.0
        disk = self.disk_usd(t0, t1)
        return total + (disk or 0.0)


class CostLedger:
    """The billing history of every managed instance, fed with the EC2 states the manager sees."""

    def __init__(self, entries: Iterable[CostEntry] = ()):
        self.entries: dict[str, CostEntry] = {e.id: e for e in entries}

    # -- feeding -------------------------------------------------------------------------------

    def entry(
        self,
        instance_id: str,
        region: str,
        instance_type: str,
        *,
        volume_gb: int | None = None,
        now: float,
    ) -> CostEntry:
        """The entry of an instance, created (disk existing from ``now``) on first sight."""
        found = self.entries.get(instance_id)
        if found is None:
            found = CostEntry(instance_id, region, instance_type, volume_gb, disk_since=now)
            self.entries[instance_id] = found
        if found.volume_gb is None and volume_gb is not None:
            found.volume_gb = volume_gb
        return found

    def observe(self, instance_id: str, ec2_state: str, now: float) -> bool:
        """Record that EC2 reports ``ec2_state`` at ``now``; True if the history changed."""
        entry = self.entries.get(instance_id)
        if entry is None or entry.terminated:
            return False
        if ec2_state == "terminated":
            self._close(entry, now)
            entry.disk_until = now
            return True
        if ec2_state in BILLED_STATES:
            if entry.running:
                return False
            entry.intervals.append([now, None, entry.hourly_usd])
            return True
        if entry.running:
            self._close(entry, now)
            return True
        return False

    @staticmethod
    def _close(entry: CostEntry, now: float) -> None:
        if entry.running:
            entry.intervals[-1][1] = max(now, entry.intervals[-1][0])

    def set_hourly(
        self, instance_id: str, hourly_usd: float | None, now: float, instance_type: str = ""
    ) -> bool:
        """The hourly price of an instance is known now (or its type changed: a new interval).

        Intervals of the same type that ran before the price was known ran at this price.
        """
        entry = self.entries.get(instance_id)
        if entry is None or hourly_usd is None:
            return False
        if instance_type and instance_type != entry.instance_type:
            entry.instance_type = instance_type
            entry.hourly_usd = hourly_usd
            if entry.running:
                self._close(entry, now)
                entry.intervals.append([now, None, hourly_usd])
            return True
        unpriced = [i for i in entry.intervals if i[2] is None]
        if entry.hourly_usd == hourly_usd and not unpriced:
            return False
        entry.hourly_usd = hourly_usd
        for interval in unpriced:
            interval[2] = hourly_usd
        return True

    def set_gb_month(self, region: str, gb_month_usd: float | None) -> bool:
        """The region's gp3 price per GB-month is now known."""
        if gb_month_usd is None:
            return False
        changed = False
        for entry in self.entries.values():
            if entry.region == region and entry.gb_month_usd != gb_month_usd:
                entry.gb_month_usd = gb_month_usd
                changed = True
        return changed

    # -- figures -------------------------------------------------------------------------------

    def instance_cost(self, instance_id: str, now: float) -> dict[str, Any]:
        """The API Instance's ``cost``: so far (since launch) and per month while stopped."""
        entry = self.entries.get(instance_id)
        if entry is None:
            return {"so_far_usd": None, "stopped_monthly_usd": None, "estimate": True}
        return {
            "so_far_usd": _money(entry.usd(float("-inf"), now)),
            "stopped_monthly_usd": _money(0.0 if entry.terminated else entry.disk_monthly_usd()),
            "estimate": True,
        }

    def summary(self, now: float, budget_usd: float | None = None) -> dict[str, Any]:
        """The answer of ``GET costs`` (DESIGN.md §4), plus ``estimate`` and the budget's state."""
        t0 = month_start(now)
        month: float | None = 0.0
        hourly: float | None = 0.0
        stopped: float | None = 0.0
        instances = []
        for entry in sorted(self.entries.values(), key=lambda e: e.disk_since or 0.0):
            part = entry.usd(t0, now)
            month = None if month is None or part is None else month + part
            if entry.terminated and (entry.disk_until or 0.0) < t0:
                continue  # gone before this month began: nothing to show
            disk_monthly = 0.0 if entry.terminated else entry.disk_monthly_usd()
            if entry.running:
                hourly = (
                    None
                    if hourly is None or entry.hourly_usd is None
                    else (hourly + entry.hourly_usd)
                )
            elif not entry.terminated:
                stopped = (
                    None if stopped is None or disk_monthly is None else (stopped + disk_monthly)
                )
            instances.append(
                {
                    "id": entry.id,
                    "so_far_usd": _money(entry.usd(float("-inf"), now)),
                    "hourly_usd": _money(entry.hourly_usd),
                    "stopped_monthly_usd": _money(disk_monthly),
                    "running": entry.running,
                    "terminated": entry.terminated,
                }
            )
        known = self.known_month_usd(now)
        return {
            "currency": "USD",
            "estimate": True,
            "month_to_date_usd": _money(month),
            "month_to_date_known_usd": _money(known),
            "running_hourly_usd": _money(hourly),
            "stopped_monthly_usd": _money(stopped),
            "budget_usd": budget_usd,
            "budget_warning": budget_warning(known, budget_usd),
            "instances": instances,
        }

    def known_month_usd(self, now: float) -> float:
        """This month's spend whose prices are known (what the budget guard compares)."""
        t0 = month_start(now)
        return sum(e.known_usd(t0, now) for e in self.entries.values())

    # -- persistence ---------------------------------------------------------------------------

    def to_json(self, now: float) -> dict[str, Any]:
        """Plain JSON for the state store; entries gone before last month are left out."""
        keep_after = month_start(now)
        for _ in range(_KEEP_MONTHS - 1):
            keep_after = month_start(keep_after - 1)
        return {
            "version": 1,
            "entries": [
                vars(e).copy()
                for e in self.entries.values()
                if e.disk_until is None or e.disk_until >= keep_after
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> CostLedger:
        """A ledger from :meth:`to_json`'s output; a malformed entry is skipped."""
        entries = []
        for raw in (data or {}).get("entries") or []:
            try:
                entry = CostEntry(
                    id=str(raw["id"]),
                    region=str(raw["region"]),
                    instance_type=str(raw["instance_type"]),
                    volume_gb=_opt_int(raw.get("volume_gb")),
                    gb_month_usd=_opt_float(raw.get("gb_month_usd")),
                    hourly_usd=_opt_float(raw.get("hourly_usd")),
                    disk_since=_opt_float(raw.get("disk_since")),
                    disk_until=_opt_float(raw.get("disk_until")),
                    intervals=[
                        [float(s), _opt_float(e), _opt_float(h)]
                        for s, e, h in raw.get("intervals") or []
                    ],
                )
            except (KeyError, TypeError, ValueError):
                continue
            entries.append(entry)
        return cls(entries)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


# -- the budget guard --------------------------------------------------------------------------


def budget_warning(spent_usd: float, budget_usd: float | None) -> bool:
    """Whether this month's spend reached :data:`BUDGET_WARNING_FRACTION` of the budget."""
    return budget_usd is not None and spent_usd >= BUDGET_WARNING_FRACTION * budget_usd


def budget_refusal(spent_usd: float, budget_usd: float | None) -> str | None:
    """Why a launch is refused by the monthly budget, or None when it is not."""
    if budget_usd is None or spent_usd < budget_usd:
        return None
    return (
        f"The monthly budget is reached (EC2Launcher.monthly_budget_usd = ${budget_usd:.2f}): "
        f"an estimated ${spent_usd:.2f} was spent on managed instances this month, "
        f"${spent_usd - budget_usd:.2f} over. Stop or terminate instances, or raise the budget."
    )


def hourly_refusal(
    instance_type: str, hourly_usd: float | None, max_hourly_usd: float | None
) -> str | None:
    """Why an instance type is refused by ``max_hourly_usd`` (a launch or a resize), or None."""
    if max_hourly_usd is None:
        return None
    if hourly_usd is None:
        return (
            f"The price of {instance_type} is not known, so the hourly limit "
            f"(EC2Launcher.max_hourly_usd = ${max_hourly_usd:.4f}) cannot be checked; try again "
            "in a minute (the price lookup is retried), or allow pricing:GetProducts."
        )
    if hourly_usd <= max_hourly_usd:
        return None
    return (
        f"{instance_type} costs ${hourly_usd:.4f}/h, above the hourly limit "
        f"(EC2Launcher.max_hourly_usd = ${max_hourly_usd:.4f}) by "
        f"${hourly_usd - max_hourly_usd:.4f}/h. Choose a smaller instance type or raise the limit."
    )


# -- the manager's side: feeding, saving, warning, refusing ------------------------------------


class CostKeeper:
    """Feeds the manager's ledger (``manager.costs``) and applies the budget (on its event loop)."""

    def __init__(self, manager: LaunchManager):
        self.manager = manager
        self._disk_pricing: set[str] = set()
        self._budget_warned: float | None = None  # the month start of the last warning
        manager.subscribe(self.on_event)

    async def load(self) -> None:
        """Read the saved ledger at start-up (an unreadable one starts afresh, with a warning)."""
        manager = self.manager
        try:
            saved = await manager._thread(manager.store.read_json, "costs")
        except EC2LauncherError as err:
            manager.log.warning("jupyter-ec2: the cost history is unreadable: %s", err.message)
            saved = None
        manager.costs = CostLedger.from_json(saved)

    def summary(self) -> dict[str, Any]:
        """The answer of ``GET costs`` (DESIGN.md §4): an estimate from the states seen."""
        manager = self.manager
        return manager.costs.summary(manager.clock(), manager.monthly_budget_usd)

    async def check_hourly_limit(self, region: str, instance_type: str, spot: bool) -> None:
        """Refuse (409) an instance type above ``max_hourly_usd``; a launch and a resize use it."""
        manager = self.manager
        if manager.max_hourly_usd is None:
            return
        hourly = await manager._thread(manager.prices.hourly_usd, region, instance_type, spot)
        why = hourly_refusal(instance_type, hourly, manager.max_hourly_usd)
        if why is not None:
            raise ConflictError(why)

    def check_budget(self) -> None:
        """Refuse (409) a launch once this month's managed spend reached the budget."""
        manager = self.manager
        spent = manager.costs.known_month_usd(manager.clock())
        why = budget_refusal(spent, manager.monthly_budget_usd)
        if why is not None:
            raise ConflictError(why)

    def on_event(self, event: LifecycleEvent) -> None:
        """Feed the EC2 states seen to the cost ledger (on each phase change and each poll)."""
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
            entry = manager.costs.entry(record.id, record.region, record.instance_type, now=now)
            if entry.volume_gb is None:
                profile = manager.profiles.get(record.profile)
                entry.volume_gb = profile.volume_gb if profile is not None else None
            state = "terminated" if record.phase == Phase.TERMINATED else record.ec2_state
            changed |= manager.costs.observe(record.id, state, now)
            changed |= manager.costs.set_hourly(record.id, record.hourly_usd, now)
            if entry.gb_month_usd is None and not entry.terminated:
                self._look_up_disk_price(record.region)
        if changed:
            self.save()
        if event.kind == "poll":
            self._warn_budget(now)

    def _look_up_disk_price(self, region: str) -> None:
        """Ask for the region's gp3 price in a thread, unless a lookup runs or backs off."""
        manager = self.manager
        if region in self._disk_pricing or not manager.prices.gb_month_due(region):
            return
        self._disk_pricing.add(region)

        async def look_up() -> None:
            try:
                price = await manager._thread(manager.prices.gb_month_usd, region)
            finally:
                self._disk_pricing.discard(region)
            if manager.costs.set_gb_month(region, price):
                self.save()

        manager._run_detached(look_up())

    def save(self) -> None:
        """Persist the ledger (``costs.json``, written in order by the manager's writer thread)."""
        manager = self.manager
        manager._write(
            manager.store.write_json_secret, "costs", manager.costs.to_json(manager.clock())
        )

    def _warn_budget(self, now: float) -> None:
        month = month_start(now)
        if self._budget_warned == month:
            return
        manager = self.manager
        spent = manager.costs.known_month_usd(now)
        if budget_warning(spent, manager.monthly_budget_usd):
            self._budget_warned = month
            manager.log.warning(
                "jupyter-ec2: an estimated $%.2f of the monthly budget of $%.2f is spent.",
                spent,
                manager.monthly_budget_usd,
            )


__all__ = [
    "BILLED_STATES",
    "BUDGET_WARNING_FRACTION",
    "MONTH_SECONDS",
    "CostEntry",
    "CostKeeper",
    "CostLedger",
    "budget_refusal",
    "budget_warning",
    "hourly_refusal",
    "month_start",
]
