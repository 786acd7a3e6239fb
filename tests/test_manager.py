"""Fast tests of the manager and the REST API over fakes of the EC2, SSH and forward layers.

These tests use FAKES, chosen through the extension's own ``backend_class``,
``provisioner_class`` and ``tunnel_class`` traits (no monkeypatching of the manager): an
in-memory EC2 that can hide an instance from its answers, a provisioner that only reports
steps, and forwards that only keep a state. They exist because every branch of the manager
(failure policies, the launch cap, degraded and back, reconnect, adoption, absence, spot
interruptions) would otherwise need a full end-to-end run of a minute or more; the real layers
are covered by their own tests and by the end-to-end tests in ``test_lifecycle.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import threading
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_ec2.aws import EC2Backend, LaunchResult, ManagedInstance, StateChange
from jupyter_ec2.errors import NotFoundError, SSHError
from jupyter_ec2.keys import generate_ed25519
from jupyter_ec2.manager import LaunchManager
from jupyter_ec2.models import Phase
from jupyter_ec2.provision import IdleStatus, Provisioner, ProvisionResult
from jupyter_ec2.tunnel import TunnelManager, TunnelState

_ids = itertools.count(0x0A000000000000001)


class FakeBackend(EC2Backend):
    """FAKE EC2: instances in a dict; ``hide_polls`` hides one from that many list answers."""

    launches: list[str] = []
    hide_polls: dict[str, int] = {}  # instance id -> list answers still hiding it
    hide_next_launch = 0
    gone: set[str] = set()  # terminated long ago: neither listed nor found by id
    ssh_refreshes: list[tuple[str, tuple[str, ...]]] = []
    launch_delay = 0.0

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.instances: dict[str, ManagedInstance] = {}

    def client(self, region=None, service="ec2"):
        raise NotFoundError("The fake cloud has no price list.")

    def launch(self, profile, *, label=None, launch_id=None):
        time.sleep(self.launch_delay)  # a thread, like boto3: concurrent launches overlap here
        instance_id = f"i-{next(_ids):017x}"
        FakeBackend.launches.append(instance_id)
        self.store.pin_host_key(instance_id, generate_ed25519().public_openssh)
        self.instances[instance_id] = self._instance(instance_id, "pending", profile, launch_id)
        if FakeBackend.hide_next_launch:
            FakeBackend.hide_polls[instance_id] = FakeBackend.hide_next_launch
        return LaunchResult(
            instance_id, launch_id, profile.region, profile.instance_type, "ami-0123456789abcdef0",
            "x86_64", "key", "sg-0123456789abcdef0", "SHA256:fake", "ssh-ed25519 AAAA",
        )  # fmt: skip

    def _instance(self, instance_id, state, profile, launch_id, **kw):
        return ManagedInstance(
            instance_id=instance_id,
            region=profile.region,
            state=state,
            instance_type=profile.instance_type,
            profile=profile.name,
            launch_id=launch_id,
            name=profile.display_name,
            spot=profile.spot,
            launch_time=dt.datetime.now(dt.timezone.utc),
            public_ip="198.51.100.7",
            security_group_ids=("sg-0123456789abcdef0",),
            **kw,
        )

    def set_state(self, instance_id, state, code=None):
        """What EC2 does on its own (a boot finishing, a spot interruption)."""
        old = self.instances[instance_id]
        self.instances[instance_id] = ManagedInstance(
            **{**vars(old), "state": state, "state_reason_code": code, "state_reason": code}
        )

    def list_instances(self, region=None):
        found = []
        for instance_id, inst in self.instances.items():
            if instance_id in self.gone:
                continue
            if self.hide_polls.get(instance_id, 0) > 0:
                self.hide_polls[instance_id] -= 1
                continue
            if inst.state == "pending":  # boots between two answers
                self.set_state(instance_id, "running")
            elif inst.state == "stopping":
                self.set_state(instance_id, "stopped")
            found.append(self.instances[instance_id])
        return found

    def owned(self, ids, region=None):
        ids = list(ids)
        missing = [i for i in ids if i not in self.instances or i in self.gone]
        if missing or any(self.hide_polls.get(i, 0) > 0 for i in ids):
            raise NotFoundError("No such instance.", code="InvalidInstanceID.NotFound")
        return [self.instances[i] for i in ids]

    def _change(self, ids, state):
        changes = []
        for i in ids:
            changes.append(StateChange(i, self.instances[i].state, state))
            self.set_state(i, state)
        return changes

    def stop(self, ids, region=None):
        return self._change(ids, "stopping")

    def start(self, ids, region=None):
        return self._change(ids, "pending")

    def terminate(self, ids, region=None):
        return self._change(ids, "terminated")

    def refresh_ssh_access(self, region=None, *, group_ids=None):
        FakeBackend.ssh_refreshes.append((region, tuple(group_ids or ())))
        return list(group_ids or ())


class FakeProvisioner(Provisioner):
    """FAKE provisioning: reports the setup steps and returns a port and token; may fail."""

    fail_with: str | None = None
    runs: list[tuple[str, bool]] = []
    idle: IdleStatus | None = None

    def provision(self, target, instance_id, base_url, on_progress=None, **kw):
        FakeProvisioner.runs.append((instance_id, kw.get("fast", False)))
        for step, percent in (("connect", 0), ("packages", 50), ("service", 90)):
            if on_progress:
                on_progress(step, percent, f"step {step}")
        if self.fail_with:
            raise SSHError(self.fail_with)
        return ProvisionResult(
            port=8888,
            token="t" * 43,
            base_url=base_url,
            tls_fingerprint=None,
            steps=("packages",),
            changed_steps=("packages",),
        )

    def read_idle_status(self, target, instance_id, **kw):
        return FakeProvisioner.idle

    def run_before_stop(self, target, instance_id):
        return {"ok": True, "detail": "nothing to save (fake)"}


class FakeForward:
    """FAKE forward: a port and a state."""

    def __init__(self, local_port: int):
        self.local_port = local_port
        self.state = TunnelState.UP


class FakeTunnels(TunnelManager):
    """FAKE forwards: nothing listens; a test drops and restores them with ``set``."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.forwards: dict[str, FakeForward] = {}

    def open(self, instance_id, target, remote_port, local_port=None, **kw):
        forward = self.forwards[instance_id] = FakeForward(local_port or 40000 + len(self.forwards))
        return forward

    def get(self, instance_id):
        return self.forwards.get(instance_id)

    def close(self, instance_id):
        self.forwards.pop(instance_id, None)

    def close_all(self):
        self.forwards.clear()

    def set(self, instance_id, state: TunnelState) -> None:
        """The forward's thread noticing a drop or a recovery."""
        self.forwards[instance_id].state = state
        threading.Thread(target=self._notify, args=(instance_id, state)).start()


@pytest.fixture(autouse=True)
def _reset_fakes():
    FakeBackend.launches = []
    FakeBackend.hide_polls = {}
    FakeBackend.hide_next_launch = 0
    FakeBackend.gone = set()
    FakeBackend.ssh_refreshes = []
    FakeBackend.launch_delay = 0.0
    FakeProvisioner.fail_with = None
    FakeProvisioner.runs = []
    FakeProvisioner.idle = None


@pytest.fixture
def jp_ec2_manager_config() -> dict:
    """The LaunchManager section: fast polls, so each test takes well under a second or two."""
    return {
        "poll_fast": 0.05,
        "poll_slow": 0.2,
        "poll_min_gap": 0.01,
        "idle_check_interval": 0.1,
        "connecting_min_seconds": 0.3,
        "absence_grace": 0.5,
    }


@pytest.fixture
def jp_server_config(jp_ec2_config, jp_ec2_manager_config, monkeypatch):
    """jupyter-ec2 on the fakes, with authentication on."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ec2": True},
            "allow_unauthenticated_access": False,
        },
        "EC2Launcher": {
            **jp_ec2_config,
            "backend_class": FakeBackend,
            "provisioner_class": FakeProvisioner,
            "tunnel_class": FakeTunnels,
        },
        "EC2Backend": {"region": "us-east-1"},
        "LaunchManager": jp_ec2_manager_config,
    }


@pytest.fixture
def manager(jp_serverapp) -> LaunchManager:
    """The running server's manager."""
    return jp_serverapp.web_app.settings["jupyter_ec2_manager"]


@pytest.fixture
def events(manager) -> list:
    """Every event the manager emits during the test."""
    seen: list = []
    unsubscribe = manager.subscribe(seen.append)
    yield seen
    unsubscribe()


async def api(jp_fetch, *parts, method="GET", body=None, params=None):
    """(status, JSON body) of one API call; errors are answers too."""
    try:
        response = await jp_fetch(
            "jupyter-ec2",
            "api",
            *parts,
            method=method,
            body=None if body is None else json.dumps(body),
            params=params,
            allow_nonstandard_methods=True,
        )
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body)
    return response.code, json.loads(response.body)


async def wait_for(jp_fetch, instance_id, phases, timeout=20.0):
    """Poll the API until the instance is in one of ``phases``."""
    deadline = time.monotonic() + timeout
    while True:
        code, inst = await api(jp_fetch, "instances", instance_id)
        if code == 200 and inst["phase"] in phases:
            return inst
        assert time.monotonic() < deadline, f"stuck in {inst}"
        await asyncio.sleep(0.02)


def phases_of(events, instance_id):
    """The phases an instance went through, without repeats."""
    out: list[str] = []
    for event in events:
        mine = event.kind == "phase" and event.instance_id == instance_id
        if mine and (not out or out[-1] != event.phase.value):
            out.append(event.phase.value)
    return out


async def launch(jp_fetch, **body):
    code, inst = await api(jp_fetch, "instances", method="POST", body={"profile": "cpu", **body})
    assert code == 202, inst
    return inst


async def test_a_launch_walks_every_phase_and_publishes_actions(
    jp_fetch, jp_base_url, manager, events
):
    # Given the fakes / When a profile is launched
    inst = await launch(jp_fetch)
    assert inst["phase"] == "launching" and inst["pending"] is True
    assert inst["actions"] == ["terminate"] and inst["idle"] is None
    ready = await wait_for(jp_fetch, inst["id"], {"ready"})
    # Then every phase of the contract was entered, in order, and the table refused nothing
    assert phases_of(events, inst["id"]) == [
        "launching",
        "booting",
        "connecting",
        "provisioning",
        "starting",
        "ready",
    ]
    assert manager.refused_transitions == 0
    # And the ready instance says what is allowed, that nothing is pending, and where to open it
    assert ready["actions"] == [
        "open",
        "reconnect",
        "stop",
        "resize",
        "keepalive",
        "image",
        "workers",
        "terminate",
    ]
    assert ready["pending"] is False
    # On a loopback server the notebook is on the instance's own origin (remote_origin "auto").
    assert ready["url"].startswith(f"http://{inst['id']}.localhost:")
    assert ready["url"].endswith(f"{jp_base_url}jupyter-ec2/remote/{inst['id']}/lab")


async def test_connecting_lasts_at_least_its_minimum(jp_fetch, manager, events):
    # Given connecting_min_seconds = 0.3 and an SSH connection that is instant (fake)
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    # Then connecting was shown at least that long before provisioning began
    times = {e.phase: e.time for e in events if e.kind == "phase" and e.instance_id == inst["id"]}
    connecting = min(e.time for e in events if e.kind == "phase" and e.phase == Phase.CONNECTING)
    assert times[Phase.PROVISIONING] - connecting >= 0.29


async def test_six_concurrent_launches_with_a_cap_of_two_launch_exactly_two(
    jp_fetch, jp_serverapp, manager
):
    # Given max_instances = 2 and a RunInstances that takes a moment
    manager.max_instances = 2
    FakeBackend.launch_delay = 0.2
    # When six launches are posted at once
    answers = await asyncio.gather(
        *[api(jp_fetch, "instances", method="POST", body={"profile": "cpu"}) for _ in range(6)]
    )
    # Then exactly two are launched and four are refused with 409 naming the limit
    codes = sorted(code for code, _ in answers)
    assert codes == [202, 202, 409, 409, 409, 409]
    assert len(FakeBackend.launches) == 2
    assert all("max_instances" in body["message"] for code, body in answers if code == 409)


@pytest.mark.parametrize(
    ("policy", "ec2_state", "actions"),
    [
        ("stop", "stopped", ["start", "terminate"]),
        ("keep", "running", ["reconnect", "stop", "terminate"]),
        ("terminate", "terminated", []),
    ],
)
async def test_on_failure_policies(jp_fetch, manager, policy, ec2_state, actions):
    # Given provisioning that fails, and an on_failure policy
    manager.on_failure = policy
    FakeProvisioner.fail_with = "setup.sh exited 1 at step packages"
    # When a profile is launched
    inst = await launch(jp_fetch)
    failed = await wait_for(jp_fetch, inst["id"], {"failed", "terminated", "stopped"})
    # Then it fails with its step and message, and EC2 has done what the policy says
    assert failed["error"]["message"] == "setup.sh exited 1 at step packages"
    deadline = time.monotonic() + 10
    while True:
        _, now = await api(jp_fetch, "instances", inst["id"])
        if now["ec2_state"] == ec2_state:
            break
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.02)
    # And the actions offered fit that state
    assert now["actions"] == actions


async def test_degraded_and_back(jp_fetch, jp_serverapp, manager):
    # Given a ready instance
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    tunnels = manager.tunnels
    # When its forward drops / Then it is degraded, pending, and offers no Open
    tunnels.set(inst["id"], TunnelState.RECONNECTING)
    degraded = await wait_for(jp_fetch, inst["id"], {"degraded"})
    assert degraded["pending"] is True and "open" not in degraded["actions"]
    # When the forward is back / Then it is ready again
    tunnels.set(inst["id"], TunnelState.UP)
    await wait_for(jp_fetch, inst["id"], {"ready"})


async def test_reconnect_refreshes_the_ssh_rule_and_brings_it_back(jp_fetch, manager):
    # Given a ready instance whose forward is down (e.g. the caller's address changed)
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    manager.tunnels.set(inst["id"], TunnelState.DOWN)
    await wait_for(jp_fetch, inst["id"], {"degraded"})
    # When the user reconnects
    code, body = await api(jp_fetch, "instances", inst["id"], "reconnect", method="POST", body={})
    # Then the SSH rule of its group is refreshed, and it is ready again without a stop
    assert code == 202 and body["phase"] == "connecting"
    assert FakeBackend.ssh_refreshes == [("us-east-1", ("sg-0123456789abcdef0",))]
    ready = await wait_for(jp_fetch, inst["id"], {"ready"})
    assert ready["ec2_state"] == "running"


async def test_the_forwards_own_retry_refreshes_the_ssh_rule(jp_fetch, manager):
    # Given a ready instance
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    # When its forward fails to reconnect, twice in a row
    manager.tunnels._notify_retry(inst["id"], 1)
    manager.tunnels._notify_retry(inst["id"], 2)
    # Then the SSH rule is refreshed once (throttled by ssh_refresh_interval)
    assert FakeBackend.ssh_refreshes == [("us-east-1", ("sg-0123456789abcdef0",))]


async def test_a_restarted_server_adopts_and_reattaches_without_provisioning(
    jp_fetch, jp_serverapp, manager
):
    # Given a ready instance and its saved state
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    runs = len(FakeProvisioner.runs)
    await manager.stop()
    # When a new manager starts on the same state and cloud
    fresh = LaunchManager(
        parent=manager.parent,
        backend=manager.backend,
        provisioner=manager.provisioner,
        tunnels=manager.tunnels,
        store=manager.store,
        profiles=manager.profiles,
    )
    await fresh.start()
    try:
        deadline = time.monotonic() + 10
        while fresh.records[inst["id"]].phase != Phase.READY:
            assert time.monotonic() < deadline, fresh.records[inst["id"]]
            await asyncio.sleep(0.02)
        # Then it is ready again with its token, and provisioning did not run again
        assert fresh.records[inst["id"]].token == "t" * 43
        assert len(FakeProvisioner.runs) == runs
    finally:
        await fresh.stop()


class TestDirectOpenMode:
    """open_mode = direct."""

    @pytest.fixture
    def jp_ec2_config(self, jp_ec2_profiles, tmp_path) -> dict:
        return {
            "profiles": jp_ec2_profiles,
            "default_profile": "cpu",
            "state_dir": str(tmp_path / "ec2-state"),
            "open_mode": "direct",
        }

    async def test_direct_open_mode_gives_the_forwarded_port_with_the_token(
        self, jp_fetch, jp_base_url
    ):
        # Given open_mode = direct / When an instance is ready
        inst = await launch(jp_fetch)
        ready = await wait_for(jp_fetch, inst["id"], {"ready"})
        # Then its url is the forwarded loopback port with the remote token
        port = ready["tunnel"]["local_port"]
        assert ready["url"] == (
            f"http://127.0.0.1:{port}{jp_base_url}jupyter-ec2/remote/{inst['id']}/lab"
            f"?token={'t' * 43}"
        )


async def test_an_instance_hidden_for_three_polls_after_launch_is_never_terminated(
    jp_fetch, manager, events
):
    # Given an EC2 that leaves a new instance out of its first three answers (eventual
    # consistency), and an absence grace longer than that
    manager.absence_grace = 30.0
    FakeBackend.hide_next_launch = 3
    # When a profile is launched
    inst = await launch(jp_fetch)
    ready = await wait_for(jp_fetch, inst["id"], {"ready"})
    # Then it reaches ready, was never shown terminated, and its pin is kept
    assert "terminated" not in phases_of(events, inst["id"])
    assert FakeBackend.hide_polls[inst["id"]] == 0
    assert manager.store.pinned_host_key(inst["id"]) is not None
    assert ready["ec2_state"] == "running"
    assert len(FakeBackend.launches) == 1
    log = [
        line["text"] for line in (await api(jp_fetch, "instances", inst["id"], "log"))[1]["lines"]
    ]
    assert any("eventually consistent" in text for text in log)
    assert any("reports the instance again" in text for text in log)


async def test_absence_past_the_grace_confirmed_by_id_is_termination(jp_fetch, manager):
    # Given a ready instance, launched longer ago than the grace (0.5 s)
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    await asyncio.sleep(0.5)
    # When EC2 no longer knows it at all (terminated long ago, outside jupyter-ec2)
    FakeBackend.gone.add(inst["id"])
    gone = await wait_for(jp_fetch, inst["id"], {"terminated"})
    # Then it is terminated, offers nothing, and its pinned key is forgotten
    assert gone["actions"] == []
    deadline = time.monotonic() + 5
    while manager.store.pinned_host_key(inst["id"]) is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_a_spot_interrupted_instance_offers_no_start(jp_fetch, manager):
    # Given a ready spot instance
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    # When EC2 stops it for a spot interruption
    manager.backend.set_state(inst["id"], "stopped", "Server.SpotInstanceShutdown")
    stopped = await wait_for(jp_fetch, inst["id"], {"stopped"})
    # Then it offers Terminate but not Start, and says why
    assert stopped["actions"] == ["image", "terminate"]
    assert "spot interruption" in stopped["message"]
    code, body = await api(jp_fetch, "instances", inst["id"], "start", method="POST", body={})
    assert code == 409 and "capacity returns" in body["message"]


async def test_stop_then_start_comes_back_and_refuses_a_second_start(jp_fetch):
    # Given a ready instance / When it is stopped
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    code, body = await api(jp_fetch, "instances", inst["id"], "stop", method="POST", body={})
    assert code == 202 and body["phase"] == "stopping" and body["actions"] == ["terminate"]
    stopped = await wait_for(jp_fetch, inst["id"], {"stopped"})
    assert stopped["actions"] == ["start", "resize", "image", "terminate"]
    # When it is started / Then it is booting and a second start is refused with 409
    code, body = await api(jp_fetch, "instances", inst["id"], "start", method="POST", body={})
    assert code == 202 and body["phase"] == "booting"
    code, body = await api(jp_fetch, "instances", inst["id"], "start", method="POST", body={})
    assert code == 409 and "start" in body["message"]
    await wait_for(jp_fetch, inst["id"], {"ready"})


async def test_idle_countdown_is_a_field(jp_fetch):
    # Given a watchdog that reports 300 s left before the idle stop
    now = time.time()
    FakeProvisioner.idle = IdleStatus(
        enabled=True,
        idle_stop_minutes=10,
        idle_since=now - 300,
        stops_at=now + 300,
        now=now,
        busy=False,
        server_up=True,
        kernels=0,
        terminals=0,
        read_at=now,
    )
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    # When the instance is read after an idle check
    deadline = time.monotonic() + 5
    while True:
        _, ready = await api(jp_fetch, "instances", inst["id"])
        if ready["idle"] is not None:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    # Then idle holds the countdown as numbers and a time, and the message stays for people
    assert 250 <= ready["idle"]["seconds_left"] <= 300
    assert ready["idle"]["busy"] is False
    assert dt.datetime.fromisoformat(ready["idle"]["stops_at"]) > dt.datetime.now(dt.timezone.utc)
    assert "stops in" not in ready["message"]


async def test_log_after_n_gives_lines_after_n(jp_fetch):
    # Given an instance with a few log lines
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    _, whole = await api(jp_fetch, "instances", inst["id"], "log")
    seqs = [line["seq"] for line in whole["lines"]]
    assert seqs[0] == 1 and whole["next"] == seqs[-1]
    # When asked for the lines after the second / Then the first line returned is the third
    _, after = await api(jp_fetch, "instances", inst["id"], "log", params={"after": seqs[1]})
    assert [line["seq"] for line in after["lines"]][0] == seqs[2]
    # And asking after `next` gives nothing new
    _, tail = await api(jp_fetch, "instances", inst["id"], "log", params={"after": whole["next"]})
    assert [line["seq"] for line in tail["lines"] if line["seq"] <= whole["next"]] == []


@pytest.mark.parametrize("after", ["²", "١", "-1", "x", "1" * 13])
async def test_log_after_that_is_no_ascii_number_is_a_400_naming_after(jp_fetch, after):
    # Given an instance
    inst = await launch(jp_fetch)
    # When its log is asked with a bad `after` / Then 400 names `after`
    code, body = await api(jp_fetch, "instances", inst["id"], "log", params={"after": after})
    assert code == 400 and body["field"] == "after"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"instance_type": "t3.medium\n"}, "overrides.instance_type"),
        ({"region": "us-east-1\n"}, "overrides.region"),
        ({"region": "us-east-¹"}, "overrides.region"),
        ({"ami": "ami-0123456789abcdef0\n"}, "overrides.ami"),
    ],
)
async def test_a_trailing_newline_or_unicode_digit_is_refused(jp_fetch, overrides, field):
    # Given a launch request whose override ends in a newline or holds a non-ASCII digit
    # When it is posted
    code, body = await api(
        jp_fetch, "instances", method="POST", body={"profile": "cpu", "overrides": overrides}
    )
    # Then 400 names the field, and nothing is launched
    assert code == 400 and body["field"] == field
    assert FakeBackend.launches == []


async def test_the_store_is_written_off_the_event_loop(jp_fetch, manager):
    # Given a record of which thread writes each state file
    threads = []
    write = manager.store.write_json_secret
    manager.store.write_json_secret = lambda *a: (threads.append(threading.get_ident()), write(*a))
    loop_thread = threading.get_ident()
    # When an instance is launched to ready
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    # Then every write happened, none of them on the event loop's thread
    assert threads and loop_thread not in threads


async def test_a_configured_forward_user_is_kept(jp_serverapp):
    # Given no c.TunnelManager.default_user / Then the forwards use the provisioner's login user
    manager = jp_serverapp.web_app.settings["jupyter_ec2_manager"]
    assert manager.tunnels.default_user == manager.provisioner.login_user


class TestForwardUser:
    """c.TunnelManager.default_user is honoured, not overwritten at start-up."""

    @pytest.fixture
    def jp_server_config(self, jp_ec2_config, jp_ec2_manager_config):
        return {
            "ServerApp": {"jpserver_extensions": {"jupyter_ec2": True}},
            "EC2Launcher": {
                **jp_ec2_config,
                "backend_class": FakeBackend,
                "provisioner_class": FakeProvisioner,
                "tunnel_class": FakeTunnels,
            },
            "TunnelManager": {"default_user": "admin"},
            "Provisioner": {"login_user": "ubuntu"},
        }

    async def test_configured_default_user_is_kept(self, jp_serverapp):
        # Given c.TunnelManager.default_user = "admin" / Then the forwards use it
        manager = jp_serverapp.web_app.settings["jupyter_ec2_manager"]
        assert manager.tunnels.default_user == "admin"


async def test_a_notebook_coming_back_is_unavailable_not_missing(jp_fetch, manager):
    """The proxy's lookup (unit level: the phase is set on the record, as a reconnect does)."""
    # Given a ready instance whose notebook was served
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    assert manager.remote_endpoint(inst["id"])[2] == "up"
    # When it is coming back (reconnect, start or resize) / Then the lookup says "down" (a 503
    # with Retry-After to a page still open), never None (a 404: "no such notebook")
    record = manager.records[inst["id"]]
    for phase in (Phase.CONNECTING, Phase.PROVISIONING, Phase.STARTING, Phase.RESIZING):
        record.phase = phase
        assert manager.remote_endpoint(inst["id"])[2] == "down", phase
    # And a stopped one has no notebook at all
    record.phase = Phase.STOPPED
    assert manager.remote_endpoint(inst["id"]) is None
    record.phase = Phase.READY
