"""The instance lifecycle as data: transitions, allowed actions, progress and decisions.

Pure: no I/O, no asyncio, no clock (callers pass times in). This module is the one place that
says which phase may follow which (DESIGN.md §2), which actions each phase allows, and what to
do when EC2 reports a state, when an instance is missing from an answer, and when a saved record
is adopted after a restart. The manager applies the small :class:`Decision` values it returns;
the REST API publishes :func:`allowed_actions` and :func:`is_pending`, so no client re-derives
them.

Actions later issues add (``resize``, ``keepalive``, ``image``, ``workers``) are already in the
table; :func:`allowed_actions` only publishes those in the ``implemented`` set it is given, which
is the manager's ``implemented_actions``. A later issue switches one on by adding its handler and
its name to that set.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from .errors import ConflictError
from .models import Phase

P = Phase

#: Every action of the API (DESIGN.md §4), in the order a client shows them.
ACTIONS = (
    "open",
    "start",
    "reconnect",
    "stop",
    "resize",
    "keepalive",
    "image",
    "workers",
    "terminate",
)

#: Phases in which EC2 may still act on an instance: every one may be followed by these.
_EC2_EXITS = frozenset({P.STOPPING, P.STOPPED, P.TERMINATING, P.TERMINATED, P.FAILED})

#: Which phase may follow which (DESIGN.md §2). Any phase may go to ``failed``.
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    P.LAUNCHING: frozenset({P.BOOTING, P.CONNECTING}) | _EC2_EXITS,
    P.BOOTING: frozenset({P.CONNECTING}) | _EC2_EXITS,
    P.CONNECTING: frozenset({P.PROVISIONING, P.STARTING, P.BOOTING}) | _EC2_EXITS,
    P.PROVISIONING: frozenset({P.STARTING, P.CONNECTING}) | _EC2_EXITS,
    P.STARTING: frozenset({P.READY, P.CONNECTING}) | _EC2_EXITS,
    P.READY: frozenset({P.DEGRADED, P.CONNECTING}) | _EC2_EXITS,
    P.DEGRADED: frozenset({P.READY, P.CONNECTING}) | _EC2_EXITS,
    P.STOPPING: frozenset({P.STOPPED, P.TERMINATING, P.TERMINATED, P.FAILED}),
    P.STOPPED: frozenset({P.BOOTING, P.RESIZING, P.TERMINATING, P.TERMINATED, P.FAILED}),
    P.RESIZING: frozenset({P.BOOTING, P.STOPPED, P.TERMINATING, P.TERMINATED, P.FAILED}),
    P.TERMINATING: frozenset({P.TERMINATED, P.FAILED}),
    P.TERMINATED: frozenset(),
    P.FAILED: frozenset({P.BOOTING, P.CONNECTING}) | _EC2_EXITS,
}

#: Phases in which something is expected to change soon (the API's ``pending``).
PENDING = frozenset(
    {
        P.LAUNCHING,
        P.BOOTING,
        P.CONNECTING,
        P.PROVISIONING,
        P.STARTING,
        P.DEGRADED,
        P.STOPPING,
        P.RESIZING,
        P.TERMINATING,
    }
)

#: Progress shown on entering a phase, before its own steps report finer values.
PHASE_PROGRESS: Mapping[Phase, int] = {
    P.LAUNCHING: 5,
    P.BOOTING: 10,
    P.CONNECTING: 20,
    P.PROVISIONING: 30,
    P.STARTING: 90,
    P.READY: 100,
}

_RUNNING = frozenset({"pending", "running"})
_UP = frozenset({P.READY, P.DEGRADED})
_COMING_UP = frozenset({P.BOOTING, P.CONNECTING, P.PROVISIONING, P.STARTING})
#: Phases in which a notebook that was served comes back by itself (reconnect, start, resize).
COMING_BACK = _COMING_UP | {P.RESIZING}

#: (phases, EC2 states or None for any) in which each action is allowed, and why not otherwise.
ACTION_RULES: Mapping[str, tuple[frozenset[Phase], frozenset[str] | None, str]] = {
    "open": (frozenset({P.READY}), None, "only a ready instance can be opened"),
    "start": (
        frozenset({P.STOPPED, P.FAILED}),
        frozenset({"stopped"}),
        "only a stopped instance can start",
    ),
    # Also in ready: the forward may look up while SSH from the caller's new address is refused.
    "reconnect": (
        _UP | {P.FAILED},
        frozenset({"running"}),
        "reconnect needs a running instance that is ready, degraded or failed",
    ),
    "stop": (
        _UP | _COMING_UP | {P.FAILED},
        _RUNNING,
        "only a running instance can stop",
    ),
    "resize": (_UP | {P.STOPPED}, None, "resize needs a ready, degraded or stopped instance"),
    "keepalive": (_UP, None, "keepalive needs a ready instance"),
    "image": (_UP | {P.STOPPED}, None, "an image needs a ready, degraded or stopped instance"),
    "workers": (_UP, None, "workers need a ready instance"),
    "terminate": (
        frozenset(P) - {P.TERMINATING, P.TERMINATED},
        None,
        "it is already terminating",
    ),
}


@dataclass(frozen=True)
class State:
    """What the rules need to know of one instance."""

    phase: Phase
    ec2_state: str = "pending"
    #: EC2 stopped it for a spot interruption: EC2 itself starts it again.
    spot_interrupted: bool = False
    #: A resize carries it through stopping → stopped → resizing → booting itself.
    resizing: bool = False
    #: A spot instance: EC2 restarts it with its request's type, so it cannot be resized.
    spot: bool = False


def can_transition(old: Phase, new: Phase) -> bool:
    """Whether ``new`` may follow ``old`` (staying in a phase is always allowed)."""
    return old == new or new in TRANSITIONS[old]


def is_pending(phase: Phase) -> bool:
    """Whether a phase is in progress (the API's ``pending``)."""
    return phase in PENDING


def refusal(state: State, action: str) -> str | None:
    """Why ``action`` is not allowed now, or None when it is."""
    phases, ec2_states, why = ACTION_RULES[action]
    if state.phase not in phases:
        return why
    if ec2_states is not None and state.ec2_state not in ec2_states:
        return f"EC2 reports it {state.ec2_state}; {why}"
    if action == "resize" and (state.spot or state.spot_interrupted):
        return "a spot instance cannot change its type (EC2 restarts it with its request's type)"
    if action == "start" and state.spot_interrupted:
        return (
            "it was stopped by a spot interruption; EC2 starts it again when capacity "
            "returns, or terminate it"
        )
    return None


def allowed_actions(state: State, implemented: Collection[str] = ACTIONS) -> list[str]:
    """The actions allowed now, among those implemented, in :data:`ACTIONS` order."""
    return [a for a in ACTIONS if a in implemented and refusal(state, a) is None]


def check_action(instance_id: str, state: State, action: str) -> None:
    """Raise the 409 for an action the current phase does not allow."""
    why = refusal(state, action)
    if why is not None:
        raise ConflictError(f"Cannot {action} {instance_id}: it is {state.phase.value}; {why}.")


def progress_on_entering(phase: Phase, current: int) -> int:
    """The progress shown on entering ``phase``: a bring-up restarts low, later steps only grow."""
    if phase in (P.LAUNCHING, P.BOOTING):
        return PHASE_PROGRESS[phase]
    return max(current, PHASE_PROGRESS.get(phase, current))


def is_spot_interruption(reason_code: str | None) -> bool:
    """Whether EC2's state reason code says a spot interruption stopped the instance."""
    return bool(reason_code) and reason_code.startswith("Server.SpotInstance")


# -- decisions ---------------------------------------------------------------------------------


class Do(str, enum.Enum):
    """What the manager does about a report."""

    NOTHING = "nothing"
    SET_PHASE = "set_phase"  # enter Decision.phase with Decision.message
    STOPPED = "stopped"  # close the forward, cancel the task, enter stopped
    TERMINATED = "terminated"  # as stopped, enter terminated and forget the pinned key
    BRING_UP = "bring_up"  # run the bring-up (booting → … → ready)
    REATTACH = "reattach"  # re-open the forward of a provisioned instance
    CONFIRM = "confirm"  # ask EC2 about this one instance by id before concluding anything
    WAIT = "wait"  # not yet: keep the phase and ask again later


@dataclass(frozen=True)
class Decision:
    """One step the manager takes."""

    do: Do
    phase: Phase | None = None
    message: str = ""


NOTHING = Decision(Do.NOTHING)


def on_ec2_state(state: State, new_ec2_state: str, reason: str | None = None) -> Decision:
    """What to do when EC2 reports ``new_ec2_state`` for an instance in ``state``."""
    phase = state.phase
    if new_ec2_state == "terminated":
        return Decision(Do.TERMINATED, P.TERMINATED, "Terminated.")
    if phase == P.TERMINATED:
        return NOTHING  # final: an answer from before the termination changes nothing
    if state.resizing and new_ec2_state in ("stopping", "stopped", "pending", "running"):
        return NOTHING  # the resize task waits for these and moves the phase itself
    if new_ec2_state == "stopped":
        if phase == P.FAILED:
            return NOTHING  # keep the failure visible; Start retries
        if state.spot_interrupted:
            reason = "Stopped by a spot interruption; EC2 starts it again when capacity returns."
        return Decision(Do.STOPPED, P.STOPPED, reason or "Stopped.")
    if new_ec2_state == "shutting-down" and phase != P.TERMINATING:
        return Decision(Do.SET_PHASE, P.TERMINATING, reason or "Terminating.")
    if new_ec2_state == "stopping" and phase in _UP | _COMING_UP:
        return Decision(Do.SET_PHASE, P.STOPPING, reason or "The instance is stopping.")
    if new_ec2_state in _RUNNING and phase == P.STOPPED:
        # Started outside the extension (or by EC2 after a spot interruption): bring it back.
        return Decision(Do.BRING_UP, P.BOOTING, "Started outside jupyter-ec2.")
    return NOTHING


def on_absent(absent_for: float, since_start: float, grace: float, confirmed: bool) -> Decision:
    """What to do when a describe answer leaves out an instance EC2 once reported.

    EC2 is eventually consistent: right after RunInstances or StartInstances the instance may be
    missing for a while. Absence is "not yet" until it has lasted ``grace`` seconds and is at
    least ``grace`` past the last launch or start; then one describe by id is asked
    (``confirmed`` is its ``InvalidInstanceID.NotFound``), and only that concludes termination.
    """
    if absent_for < grace or since_start < grace:
        return Decision(Do.WAIT)
    if not confirmed:
        return Decision(Do.CONFIRM)
    return Decision(Do.TERMINATED, P.TERMINATED, "Gone from EC2: terminated.")


def on_adopt(
    ec2_state: str,
    *,
    failed: bool,
    provisioned: bool,
    has_token: bool,
    spot_interrupted: bool = False,
    reason: str | None = None,
) -> Decision:
    """What to do with a managed instance found by its tags that this server has no record of."""
    if ec2_state == "terminated":
        return NOTHING
    if failed:
        return Decision(Do.SET_PHASE, P.FAILED, "Failed.")
    if ec2_state in ("stopped", "stopping"):
        if spot_interrupted:
            reason = "Stopped by a spot interruption; EC2 starts it again when capacity returns."
        return Decision(Do.SET_PHASE, P.STOPPED, reason or "Stopped.")
    if ec2_state == "shutting-down":
        return Decision(Do.SET_PHASE, P.TERMINATING, "Terminating.")
    if ec2_state == "running" and provisioned and has_token:
        return Decision(Do.REATTACH, P.CONNECTING, "Re-attaching after a restart.")
    return Decision(Do.BRING_UP, P.BOOTING, "Found by its tags; its setup had not finished.")


@dataclass(frozen=True)
class LifecycleEvent:
    """What the manager's subscribers receive (tests and benches subscribe, never patch).

    ``kind`` is ``phase`` (``old`` → ``phase``, ``text`` the message), ``log`` (a log line of
    ``step``), ``progress`` (a provisioning step reported, in the worker thread's order) or
    ``poll`` (one round of describe calls finished; ``data`` holds ``aws_calls`` and ``t0``).
    """

    kind: str
    instance_id: str | None = None
    phase: Phase | None = None
    old: Phase | None = None
    step: str = ""
    text: str = ""
    time: float = 0.0
    data: Mapping[str, float] | None = None


__all__ = [
    "ACTIONS",
    "ACTION_RULES",
    "PENDING",
    "PHASE_PROGRESS",
    "TRANSITIONS",
    "Decision",
    "Do",
    "LifecycleEvent",
    "State",
    "allowed_actions",
    "can_transition",
    "check_action",
    "is_pending",
    "is_spot_interruption",
    "on_absent",
    "on_adopt",
    "on_ec2_state",
    "progress_on_entering",
    "refusal",
]
