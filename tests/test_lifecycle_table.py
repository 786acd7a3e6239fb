"""The lifecycle table against DESIGN.md §2, pair by pair; and every decision, without I/O.

Pure tests of :mod:`jupyter_ec2.lifecycle`: no AWS, no SSH, no event loop. The expected tables
below are written out again from the contract, so a change to the module's table that the
contract does not make fails here.
"""

from __future__ import annotations

import itertools

import pytest

from jupyter_ec2 import lifecycle as lc
from jupyter_ec2.errors import ConflictError
from jupyter_ec2.lifecycle import Do, State
from jupyter_ec2.models import Phase

P = Phase
EXITS = {P.STOPPING, P.STOPPED, P.TERMINATING, P.TERMINATED, P.FAILED}

#: DESIGN.md §2, every arrow, plus what EC2 may do at any time (stop, terminate, fail).
EXPECTED = {
    P.LAUNCHING: {P.BOOTING, P.CONNECTING} | EXITS,
    P.BOOTING: {P.CONNECTING} | EXITS,
    P.CONNECTING: {P.PROVISIONING, P.STARTING, P.BOOTING} | EXITS,
    P.PROVISIONING: {P.STARTING, P.CONNECTING} | EXITS,
    P.STARTING: {P.READY, P.CONNECTING} | EXITS,
    P.READY: {P.DEGRADED, P.CONNECTING} | EXITS,
    P.DEGRADED: {P.READY, P.CONNECTING} | EXITS,
    P.STOPPING: {P.STOPPED, P.TERMINATING, P.TERMINATED, P.FAILED},
    P.STOPPED: {P.BOOTING, P.RESIZING, P.TERMINATING, P.TERMINATED, P.FAILED},
    P.RESIZING: {P.BOOTING, P.STOPPED, P.TERMINATING, P.TERMINATED, P.FAILED},
    P.TERMINATING: {P.TERMINATED, P.FAILED},
    P.TERMINATED: set(),
    P.FAILED: {P.BOOTING, P.CONNECTING} | EXITS,
}

#: The arrows DESIGN.md §2 draws, each of which must be allowed.
CONTRACT_PATH = [
    (P.LAUNCHING, P.BOOTING),
    (P.BOOTING, P.CONNECTING),
    (P.CONNECTING, P.PROVISIONING),
    (P.PROVISIONING, P.STARTING),
    (P.STARTING, P.READY),
    (P.READY, P.DEGRADED),
    (P.DEGRADED, P.READY),
    (P.READY, P.STOPPING),
    (P.STOPPING, P.STOPPED),
    (P.STOPPED, P.BOOTING),
    (P.STOPPED, P.RESIZING),
    (P.RESIZING, P.BOOTING),
    (P.READY, P.TERMINATING),
    (P.TERMINATING, P.TERMINATED),
]

RUNNING = {"running"}
ALIVE = {"pending", "running"}
ANY = None
#: (phases, EC2 states that allow it or ANY) per action, from DESIGN.md §2 and §4.
ACTIONS = {
    "open": ({P.READY}, ANY),
    "start": ({P.STOPPED, P.FAILED}, {"stopped"}),
    "reconnect": ({P.READY, P.DEGRADED, P.FAILED}, RUNNING),
    "stop": (
        {P.BOOTING, P.CONNECTING, P.PROVISIONING, P.STARTING, P.READY, P.DEGRADED, P.FAILED},
        ALIVE,
    ),
    "resize": ({P.READY, P.DEGRADED, P.STOPPED}, ANY),
    "keepalive": ({P.READY, P.DEGRADED}, ANY),
    "image": ({P.READY, P.DEGRADED, P.STOPPED}, ANY),
    "workers": ({P.READY, P.DEGRADED}, ANY),
    "terminate": (set(P) - {P.TERMINATING, P.TERMINATED}, ANY),
}
EC2_STATES = ["pending", "running", "stopping", "stopped", "shutting-down", "terminated"]


@pytest.mark.parametrize(("old", "new"), list(itertools.product(P, P)))
def test_every_pair_of_phases_is_allowed_exactly_as_the_contract_says(old, new):
    # Given two phases / When the table is asked / Then it answers as DESIGN.md §2
    assert lc.can_transition(old, new) == (old == new or new in EXPECTED[old])


def test_the_contract_path_walks_through_and_every_phase_can_fail():
    # Given the arrows of the contract / Then each is allowed
    for old, new in CONTRACT_PATH:
        assert lc.can_transition(old, new), (old, new)
    # And any phase but terminated may fail; terminated is final
    for phase in P:
        assert lc.can_transition(phase, P.FAILED) == (phase != P.TERMINATED)
    assert not any(lc.can_transition(P.TERMINATED, p) for p in P if p != P.TERMINATED)


@pytest.mark.parametrize(
    ("phase", "action", "ec2"), list(itertools.product(P, lc.ACTIONS, EC2_STATES))
)
def test_every_phase_action_pair_is_allowed_exactly_as_the_contract_says(phase, action, ec2):
    # Given an instance in a phase and an EC2 state
    state = State(phase, ec2)
    phases, states = ACTIONS[action]
    expected = phase in phases and (states is None or ec2 in states)
    # When the rules are asked / Then the action is allowed exactly when expected
    assert (lc.refusal(state, action) is None) == expected
    assert (action in lc.allowed_actions(state)) == expected
    if expected:
        lc.check_action("i-0123456789abcdef0", state, action)
    else:
        with pytest.raises(ConflictError) as caught:
            lc.check_action("i-0123456789abcdef0", state, action)
        assert caught.value.status == 409
        assert action in caught.value.message and phase.value in caught.value.message


def test_only_implemented_actions_are_published():
    # Given a ready instance and a manager that implements only some actions
    state = State(P.READY, "running")
    # When the allowed actions are asked for / Then resize, keepalive, image, workers are absent
    assert lc.allowed_actions(state, {"open", "stop", "terminate"}) == ["open", "stop", "terminate"]
    assert "resize" in lc.allowed_actions(state)


def test_a_spot_interrupted_instance_offers_no_start_and_says_why():
    # Given an instance stopped by a spot interruption
    state = State(P.STOPPED, "stopped", spot_interrupted=True)
    # When its actions are asked for / Then Start is not among them, Terminate is
    assert "start" not in lc.allowed_actions(state)
    assert "terminate" in lc.allowed_actions(state)
    with pytest.raises(ConflictError, match="spot interruption"):
        lc.check_action("i-0123456789abcdef0", state, "start")
    # And EC2's reason code is recognised
    assert lc.is_spot_interruption("Server.SpotInstanceShutdown")
    assert not lc.is_spot_interruption("Client.UserInitiatedShutdown")
    assert not lc.is_spot_interruption(None)


def test_pending_and_progress_follow_the_phase():
    # Given every phase / Then pending is true exactly while something is under way
    steady = {P.READY, P.STOPPED, P.TERMINATED, P.FAILED}
    for phase in P:
        assert lc.is_pending(phase) == (phase not in steady)
    # And progress restarts on a new bring-up but never falls back within one
    assert lc.progress_on_entering(P.BOOTING, 80) == 10
    assert lc.progress_on_entering(P.CONNECTING, 10) == 20
    assert lc.progress_on_entering(P.STARTING, 93) == 93
    assert lc.progress_on_entering(P.READY, 93) == 100


@pytest.mark.parametrize(
    ("phase", "ec2", "do", "new"),
    [
        (P.READY, "terminated", Do.TERMINATED, P.TERMINATED),
        (P.BOOTING, "terminated", Do.TERMINATED, P.TERMINATED),
        (P.READY, "stopped", Do.STOPPED, P.STOPPED),
        (P.FAILED, "stopped", Do.NOTHING, None),  # the failure stays visible
        (P.READY, "stopping", Do.SET_PHASE, P.STOPPING),
        (P.DEGRADED, "stopping", Do.SET_PHASE, P.STOPPING),
        (P.READY, "shutting-down", Do.SET_PHASE, P.TERMINATING),
        (P.STOPPED, "running", Do.BRING_UP, P.BOOTING),  # started outside jupyter-ec2
        (P.BOOTING, "running", Do.NOTHING, None),  # the bring-up task goes on
        (P.TERMINATED, "running", Do.NOTHING, None),
    ],
)
def test_what_ec2_reports_is_decided(phase, ec2, do, new):
    # Given an instance in a phase / When EC2 reports a state / Then the decision is as listed
    decision = lc.on_ec2_state(State(phase, "pending"), ec2)
    assert decision.do is do
    assert decision.phase == new
    if new is not None:
        assert lc.can_transition(phase, new)


def test_a_spot_interruption_stop_says_ec2_restarts_it():
    # Given a spot instance that EC2 stopped for an interruption
    decision = lc.on_ec2_state(State(P.READY, "running", spot_interrupted=True), "stopped")
    # Then it is shown stopped with the reason
    assert decision.do is Do.STOPPED and "spot interruption" in decision.message


def test_an_instance_missing_for_three_polls_right_after_launch_is_not_yet_terminated():
    # Given an instance launched at t=0, missing from the answers of the polls at 1, 2 and 3 s
    grace = 180.0
    absent_since = 1.0
    for now in (1.0, 2.0, 3.0):
        decision = lc.on_absent(now - absent_since, now, grace, confirmed=False)
        # Then each time the decision is "not yet": its phase stays, nothing is forgotten
        assert decision.do is Do.WAIT
    # When the next answer reports it running / Then the usual decision applies (no termination)
    assert lc.on_ec2_state(State(P.BOOTING, "pending"), "running").do is Do.NOTHING


def test_absence_past_the_grace_is_confirmed_by_id_before_termination():
    # Given an instance missing for longer than the grace, long after its launch
    grace = 180.0
    # When no describe by id has confirmed it / Then the decision is to ask by id
    assert lc.on_absent(200.0, 5000.0, grace, confirmed=False).do is Do.CONFIRM
    # When the describe by id said NotFound / Then it is terminated
    gone = lc.on_absent(200.0, 5000.0, grace, confirmed=True)
    assert gone.do is Do.TERMINATED and gone.phase == P.TERMINATED
    # And absence past the grace but soon after a start is still "not yet"
    assert lc.on_absent(200.0, 60.0, grace, confirmed=True).do is Do.WAIT


@pytest.mark.parametrize(
    ("ec2", "kwargs", "do", "phase"),
    [
        ("running", {"provisioned": True, "has_token": True}, Do.REATTACH, P.CONNECTING),
        ("running", {"provisioned": False, "has_token": False}, Do.BRING_UP, P.BOOTING),
        ("pending", {"provisioned": True, "has_token": True}, Do.BRING_UP, P.BOOTING),
        ("stopped", {"provisioned": True, "has_token": True}, Do.SET_PHASE, P.STOPPED),
        ("stopping", {"provisioned": True, "has_token": True}, Do.SET_PHASE, P.STOPPED),
        ("shutting-down", {"provisioned": True, "has_token": True}, Do.SET_PHASE, P.TERMINATING),
        ("terminated", {"provisioned": True, "has_token": True}, Do.NOTHING, None),
        (
            "running",
            {"provisioned": True, "has_token": True, "failed": True},
            Do.SET_PHASE,
            P.FAILED,
        ),
    ],
)
def test_a_saved_record_is_adopted_after_a_restart(ec2, kwargs, do, phase):
    # Given a managed instance found by its tags after a restart, and what was saved of it
    kwargs = {"failed": False, **kwargs}
    # When it is adopted / Then the decision is as listed, and a transition from a fresh record
    decision = lc.on_adopt(ec2, **kwargs)
    assert decision.do is do and decision.phase == phase
    if phase is not None:
        assert lc.can_transition(P.LAUNCHING, phase)
