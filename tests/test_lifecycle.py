"""End to end: the REST API drives real instances of the simulated cloud to ready and back.

Real parts only: moto over HTTP on loopback, an OpenSSH sshd per instance, provisioning over SSH
that starts a real ``jupyter server`` on the instance host, the forward and the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import secrets
import threading
import time
from pathlib import Path

import paramiko
import pytest
from tornado.httpclient import HTTPClientError

from jupyter_ec2.testing.demo import IMAGE_PYTHON, remove_user, simulated_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(IMAGE_PYTHON).exists(), reason=f"{IMAGE_PYTHON} missing: run `make sim-image`"
    ),
]

READY_TIMEOUT = 120


@pytest.fixture(scope="module")
def jp_ec2_notebook_user():
    """A notebook user name unique to this module; removed from this machine afterwards."""
    name = f"jec2l{secrets.token_hex(3)}"
    yield name
    remove_user(name)


@pytest.fixture
def jp_base_url() -> str:
    """A base_url as JupyterHub gives one, so every path is proven to honour it."""
    return "/user/alice/"


@pytest.fixture
def jp_ec2_boot_delay() -> float:
    """Instances boot for a moment, so the booting phase is seen."""
    return 1.0


@pytest.fixture
def idle_marker(tmp_path: Path) -> Path:
    """The file the (harmless) idle-stop command would create."""
    return tmp_path / "idle-stop-ran"


@pytest.fixture
def jp_server_config(
    jp_ec2_cloud, jp_ec2_hosts, tmp_path, jp_ec2_notebook_user, jp_ec2_profiles, idle_marker
):
    """The extension on the simulated cloud, with authentication on and fast polling."""
    config = simulated_config(
        jp_ec2_cloud,
        jp_ec2_hosts,
        tmp_path / "state",
        notebook_user=jp_ec2_notebook_user,
        idle_stop_command=f"touch {idle_marker}",
        profiles={
            **jp_ec2_profiles,
            "idle": {
                "display_name": "Idle quickly",
                "instance_type": "t3.small",
                "idle_stop_minutes": 0.25,
            },
            "broken": {
                "display_name": "Broken",
                "instance_type": "t3.small",
                "environment": {"kind": "pip", "packages": ["jec2-no-such-package==1.0"]},
            },
        },
    )
    config["ServerApp"]["allow_unauthenticated_access"] = False
    config["LaunchManager"] = {"poll_fast": 0.2, "poll_slow": 1.0, "idle_check_interval": 0.5}
    config["Provisioner"]["wheel_dir"] = str(tmp_path / "empty-wheels")
    (tmp_path / "empty-wheels").mkdir()
    return config


async def _json(jp_fetch, *parts, method="GET", body=None, **kwargs):
    response = await jp_fetch(
        "jupyter-ec2",
        "api",
        *parts,
        method=method,
        body=None
        if body is None
        else (body if isinstance(body, (bytes, str)) else json.dumps(body)),
        allow_nonstandard_methods=True,
        **kwargs,
    )
    return response.code, json.loads(response.body)


async def _wait_phase(jp_fetch, instance_id, wanted, seen=None, timeout=READY_TIMEOUT):
    """Poll the instance until its phase is one of ``wanted``; record every phase seen."""
    deadline = time.monotonic() + timeout
    while True:
        _, inst = await _json(jp_fetch, "instances", instance_id)
        if seen is not None and (not seen or seen[-1] != inst["phase"]):
            seen.append(inst["phase"])
        if inst["phase"] in wanted:
            return inst
        if inst["phase"] == "failed" and "failed" not in wanted:
            _, log = await _json(jp_fetch, "instances", instance_id, "log")
            pytest.fail(
                f"failed: {inst['error']}\n" + "\n".join(line["text"] for line in log["lines"])
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{instance_id} stuck in {inst['phase']} ({inst['message']})")
        await asyncio.sleep(0.2)


def _watch_once_a_second(jp_fetch, instance_id) -> asyncio.Task:
    """A client that reads the instance once a second (fixed rate) and keeps every phase."""

    async def watch(seen: list[str]) -> list[str]:
        next_read = time.monotonic()
        while True:
            _, inst = await _json(jp_fetch, "instances", instance_id)
            seen.append(inst["phase"])
            next_read += 1.0
            await asyncio.sleep(max(0.0, next_read - time.monotonic()))

    seen: list[str] = []
    task = asyncio.ensure_future(watch(seen))
    task.seen = seen  # type: ignore[attr-defined]
    return task


async def _stop(task: asyncio.Task) -> list[str]:
    """Stop a watcher; the phases it saw."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return task.seen  # type: ignore[attr-defined]


def _running(cloud) -> list[str]:
    found = cloud.client().describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )
    return [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]


def _forward_threads() -> set[threading.Thread]:
    """Threads of SSH connections and forwards (paramiko transports, the forward's own)."""
    return {
        t
        for t in threading.enumerate()
        if isinstance(t, paramiko.Transport) or t.name.startswith("forward-")
    }


async def test_launch_ready_open_stop_start_terminate(
    jp_fetch, jp_ec2_cloud, jp_ec2_hosts, jp_base_url, jp_http_port
):
    # Given a server with the extension on the simulated cloud and no instance
    threads_before = _forward_threads()
    # When the cpu profile is launched
    code, inst = await _json(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    # Then the answer is 202 with the instance in phase launching
    assert code == 202
    assert inst["phase"] == "launching" and inst["url"] is None
    instance_id = inst["id"]
    # And it goes through the phases in order to ready, connecting seen by a 1 Hz client too
    seen: list[str] = []
    once_a_second = _watch_once_a_second(jp_fetch, instance_id)
    ready = await _wait_phase(jp_fetch, instance_id, {"ready"}, seen)
    assert "connecting" in await _stop(once_a_second)
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
    order = ["launching", "booting", "connecting", "provisioning", "starting", "ready"]
    assert [p for p in seen if p in order] == sorted(set(seen) & set(order), key=order.index)
    assert {"booting", "provisioning", "ready"} <= set(seen)
    assert ready["progress"] == 100
    assert ready["tunnel"]["state"] == "up"
    # (a loopback server: "auto" serves the notebook on an origin of its own, issue #18)
    assert ready["url"] == (
        f"http://{instance_id}.localhost:{jp_http_port}{jp_base_url}"
        f"jupyter-ec2/remote/{instance_id}/lab"
    )
    # And the url serves the remote notebook through the proxy, with only local credentials
    remote_status = await jp_fetch("jupyter-ec2", "remote", instance_id, "api", "status")
    assert remote_status.code == 200
    assert "started" in json.loads(remote_status.body)
    # And the log tells the steps
    _, log = await _json(jp_fetch, "instances", instance_id, "log")
    assert len(log["lines"]) > 3 and log["next"] == log["lines"][-1]["seq"]
    _, later = await _json(jp_fetch, "instances", instance_id, "log", params={"after": log["next"]})
    assert later["lines"] == []

    # When start is asked of a running instance / Then it is a conflict
    with pytest.raises(HTTPClientError) as caught:
        await _json(jp_fetch, "instances", instance_id, "start", method="POST", body={})
    assert caught.value.code == 409

    # When it is stopped, twice at the same moment (two tabs)
    address_before = jp_ec2_hosts.addresses(instance_id)
    results = await asyncio.gather(
        *[
            _json(jp_fetch, "instances", instance_id, "stop", method="POST", body={})
            for _ in range(2)
        ],
        return_exceptions=True,
    )
    # Then one is accepted and the other is a conflict
    accepted = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, HTTPClientError)]
    assert len(accepted) == 1 and len(refused) == 1, results
    assert accepted[0][0] == 202 and accepted[0][1]["phase"] == "stopping"
    assert refused[0].code == 409
    stopped = await _wait_phase(jp_fetch, instance_id, {"stopped"})
    # Then the forward is closed, the url gone and the host down
    assert stopped["tunnel"] is None and stopped["url"] is None
    await asyncio.to_thread(jp_ec2_hosts.wait_for_no_host, instance_id)
    assert jp_ec2_hosts.host_for(instance_id) is None

    assert (
        stopped["actions"] == ["start", "resize", "image", "terminate"]
        and stopped["pending"] is False
    )
    # When it is started again / Then it is ready on its new address, connecting seen at 1 Hz
    once_a_second = _watch_once_a_second(jp_fetch, instance_id)
    code, inst = await _json(jp_fetch, "instances", instance_id, "start", method="POST", body={})
    assert code == 202
    await _wait_phase(jp_fetch, instance_id, {"ready"})
    assert "connecting" in await _stop(once_a_second)
    assert jp_ec2_hosts.addresses(instance_id) != address_before
    remote_status = await jp_fetch("jupyter-ec2", "remote", instance_id, "api", "status")
    assert remote_status.code == 200

    # When it is terminated
    code, inst = await _json(jp_fetch, "instances", instance_id, method="DELETE")
    assert code == 202 and inst["phase"] == "terminating"
    await _wait_phase(jp_fetch, instance_id, {"terminated"})
    # Then nothing runs: no instance in the cloud, no host, no forward thread
    assert _running(jp_ec2_cloud) == []
    await asyncio.to_thread(jp_ec2_hosts.sync)
    assert jp_ec2_hosts.host_for(instance_id) is None
    deadline = time.monotonic() + 10
    while _forward_threads() - threads_before and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert _forward_threads() - threads_before == set()


async def test_restart_reattaches_without_provisioning(jp_fetch, jp_serverapp):
    # Given an instance brought to ready by this server
    _, inst = await _json(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    await _wait_phase(jp_fetch, inst["id"], {"ready"})
    app = jp_serverapp.extension_manager.extension_points["jupyter_ec2"].app
    # When the server's manager is shut down and a new one is built from the same state dir,
    # as a restarted server does
    await app.manager.stop()
    app.tunnels = app.tunnel_class(parent=app)
    app.manager = app.manager_class(
        parent=app,
        backend=app.backend,
        provisioner=app.provisioner,
        tunnels=app.tunnels,
        store=app.store,
        profiles=app.profile_set,
        base_url=jp_serverapp.base_url,
        open_mode=app.open_mode,
    )
    jp_serverapp.web_app.settings["jupyter_ec2_manager"] = app.manager  # what handlers use
    # Then the instance is listed and comes back to ready
    again = await _wait_phase(jp_fetch, inst["id"], {"ready"})
    assert again["url"]
    # And the log says no provisioning step re-ran
    _, log = await _json(jp_fetch, "instances", inst["id"], "log")
    texts = [line["text"] for line in log["lines"]]
    steps = {line["step"] for line in log["lines"]}
    assert any("provisioning not re-run" in t for t in texts)
    assert steps <= {"reattach", "forward", "ready", "ec2"}, steps
    remote_status = await jp_fetch("jupyter-ec2", "remote", inst["id"], "api", "status")
    assert remote_status.code == 200
    await _json(jp_fetch, "instances", inst["id"], method="DELETE")
    await _wait_phase(jp_fetch, inst["id"], {"terminated"})


async def test_launch_never_recorded_is_adopted_not_relaunched(
    jp_fetch, jp_serverapp, jp_ec2_cloud
):
    # Given a server that crashed between RunInstances and saving the instance's record:
    # the launch record is on disk and the instance exists, but no instance record
    app = jp_serverapp.extension_manager.extension_points["jupyter_ec2"].app
    launch_id = "0f3c2a9e-1111-4222-8333-944455556666"
    app.store.write_json_secret(f"launch-{launch_id}", {"launch_id": launch_id})
    profile = app.profile_set.get("cpu")
    result = await asyncio.to_thread(app.backend.launch, profile, launch_id=launch_id)
    # When the server starts again and the instances are listed
    _, listed = await _json(jp_fetch, "instances")
    # Then the instance is found by its tags, brought to ready, and nothing else was launched
    assert [i["id"] for i in listed["instances"]] == [result.instance_id]
    await _wait_phase(jp_fetch, result.instance_id, {"ready"})
    assert _running(jp_ec2_cloud) == [result.instance_id]
    assert app.store.read_json(f"launch-{launch_id}") is None
    await _json(jp_fetch, "instances", result.instance_id, method="DELETE")
    await _wait_phase(jp_fetch, result.instance_id, {"terminated"})


async def test_provisioning_failure_is_stopped_and_terminable(jp_fetch, jp_ec2_cloud):
    # Given a profile whose environment asks for a package that does not exist
    # When it is launched
    _, inst = await _json(jp_fetch, "instances", method="POST", body={"profile": "broken"})
    failed = await _wait_phase(jp_fetch, inst["id"], {"failed"})
    # Then it failed naming the step, and says what happened
    assert failed["error"]["step"] == "environment"
    assert failed["error"]["message"]
    # And the instance is stopped, so it costs nothing
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, failed = await _json(jp_fetch, "instances", inst["id"])
        if failed["ec2_state"] == "stopped":
            break
        await asyncio.sleep(0.2)
    assert failed["ec2_state"] == "stopped"
    assert failed["phase"] == "failed"
    # And Terminate works
    code, _ = await _json(jp_fetch, "instances", inst["id"], method="DELETE")
    assert code == 202
    await _wait_phase(jp_fetch, inst["id"], {"terminated"}, timeout=30)
    assert _running(jp_ec2_cloud) == []


async def test_idle_countdown_auto_stop_and_outside_stop(jp_fetch, jp_ec2_cloud, idle_marker):
    # Given an instance whose profile stops it after 15 idle seconds
    _, inst = await _json(jp_fetch, "instances", method="POST", body={"profile": "idle"})
    await _wait_phase(jp_fetch, inst["id"], {"ready"})
    # When nothing runs on it
    deadline = time.monotonic() + 30
    idle = None
    while (idle is None or idle["seconds_left"] is None) and time.monotonic() < deadline:
        _, ready = await _json(jp_fetch, "instances", inst["id"])
        idle = ready["idle"]
        await asyncio.sleep(0.2)
    # Then the instance carries the countdown to the idle auto-stop as fields
    assert idle is not None and idle["busy"] is False
    assert 0 <= idle["seconds_left"] <= 15 and idle["stops_at"]
    # And the watchdog on the instance runs the (harmless) stop command when the time is up
    deadline = time.monotonic() + 40
    while not idle_marker.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert idle_marker.exists()

    # When the instance is stopped outside jupyter-ec2 (the console, or a real idle stop)
    await asyncio.to_thread(jp_ec2_cloud.client().stop_instances, InstanceIds=[inst["id"]])
    # Then the poller notices: stopped, forward closed, no url
    stopped = await _wait_phase(jp_fetch, inst["id"], {"stopped"}, timeout=30)
    assert stopped["tunnel"] is None and stopped["url"] is None
    await _json(jp_fetch, "instances", inst["id"], method="DELETE")
    await _wait_phase(jp_fetch, inst["id"], {"terminated"}, timeout=30)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"profile": "nope"}, "profile"),
        ({"profile": "cpu", "colour": "red"}, "colour"),
        ({"profile": "cpu", "overrides": {"volume_gb": 2}}, "overrides.volume_gb"),
        ({"profile": "cpu", "overrides": {"volume_gb": "big"}}, "overrides.volume_gb"),
        ({"profile": "cpu", "overrides": {"tags": {"a": "b"}}}, "overrides.tags"),
        (
            {"profile": "cpu", "overrides": {"instance_type": "t9.nonsense"}},
            "overrides.instance_type",
        ),
        ({"profile": "cpu", "name": 7}, "name"),
        ({"profile": 3}, "profile"),
        ([], "body"),
        ("{not json", "body"),
        ("x" * (1024 * 1024), "body"),
    ],
)
async def test_bad_launch_bodies_are_400_and_launch_nothing(jp_fetch, jp_ec2_cloud, body, field):
    # Given a bad launch body
    raw = body if isinstance(body, str) else json.dumps(body)
    # When it is posted
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("jupyter-ec2", "api", "instances", method="POST", body=raw)
    # Then it is a 400 naming the field, and nothing was launched
    assert caught.value.code == 400
    assert json.loads(caught.value.response.body)["field"] == field
    assert _running(jp_ec2_cloud) == []
    _, listed = await _json(jp_fetch, "instances")
    assert listed["instances"] == []


async def test_unknown_instance_is_404(jp_fetch):
    # Given no instance / When an unknown id is asked for, acted on or deleted / Then 404
    for method, parts in [("GET", ()), ("POST", ("stop",)), ("DELETE", ()), ("GET", ("log",))]:
        with pytest.raises(HTTPClientError) as caught:
            await jp_fetch(
                "jupyter-ec2",
                "api",
                "instances",
                "i-0123456789abcdef0",
                *parts,
                method=method,
                body=b"{}" if method == "POST" else None,
                allow_nonstandard_methods=True,
            )
        assert caught.value.code == 404


async def test_a_lagging_describe_never_marks_a_new_instance_terminated(
    jp_fetch, jp_serverapp, jp_ec2_cloud
):
    # Given an EC2 that hides a new instance from DescribeInstances (and answers NotFound to a
    # describe by id) for 20 s after RunInstances, as eventual consistency may
    if not hasattr(jp_ec2_cloud, "set_lag"):
        pytest.skip("the simulated cloud has no lag mode (jp_ec2_cloud.set_lag)")
    jp_ec2_cloud.set_lag(20)
    manager = jp_serverapp.web_app.settings["jupyter_ec2_manager"]
    # When the cpu profile is launched
    _, inst = await _json(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    seen: list[str] = []
    await _wait_phase(jp_fetch, inst["id"], {"ready"}, seen, timeout=READY_TIMEOUT + 20)
    # Then it reached ready without ever being shown terminated, exactly one instance exists,
    # and its pinned host key is kept
    assert "terminated" not in seen
    assert _running(jp_ec2_cloud) == [inst["id"]]
    assert manager.store.pinned_host_key(inst["id"]) is not None
    _, log = await _json(jp_fetch, "instances", inst["id"], "log")
    assert any("eventually consistent" in line["text"] for line in log["lines"])
    jp_ec2_cloud.set_lag(0)
    await _json(jp_fetch, "instances", inst["id"], method="DELETE")
    await _wait_phase(jp_fetch, inst["id"], {"terminated"})


class _CallerAddress(http.server.ThreadingHTTPServer):
    """A local stand-in for the "what is my public address" service; the test moves it."""

    address = "52.95.110.1"

    def __init__(self) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.address.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class TestCallerAddressChange:
    """After the caller's public address changes, Reconnect puts the new /32 in the SSH rule."""

    @pytest.fixture
    def caller(self):
        service = _CallerAddress()
        yield service
        service.shutdown()
        service.server_close()

    @pytest.fixture
    def jp_server_config(self, jp_server_config, caller):
        jp_server_config["EC2Backend"]["ssh_cidrs"] = ["auto"]
        jp_server_config["EC2Backend"]["caller_ip_url"] = caller.url
        return jp_server_config

    async def test_reconnect_refreshes_the_rule_without_a_stop(
        self, jp_fetch, jp_ec2_cloud, caller
    ):
        # Given a ready instance launched from 52.95.110.1
        _, inst = await _json(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
        await _wait_phase(jp_fetch, inst["id"], {"ready"})
        assert _ssh_cidrs(jp_ec2_cloud, inst["id"]) == {"52.95.110.1/32"}
        # When the caller's public address changes and the user presses Reconnect
        caller.address = "52.95.110.2"
        code, body = await _json(
            jp_fetch, "instances", inst["id"], "reconnect", method="POST", body={}
        )
        # Then the SSH rule holds the new address only
        assert code == 202 and body["phase"] == "connecting"
        assert _ssh_cidrs(jp_ec2_cloud, inst["id"]) == {"52.95.110.2/32"}
        # And the instance is ready again, never stopped
        seen: list[str] = []
        ready = await _wait_phase(jp_fetch, inst["id"], {"ready"}, seen)
        assert "stopping" not in seen and ready["ec2_state"] == "running"
        await _json(jp_fetch, "instances", inst["id"], method="DELETE")
        await _wait_phase(jp_fetch, inst["id"], {"terminated"})


def _ssh_cidrs(cloud, instance_id: str) -> set[str]:
    """The CIDRs allowed on tcp/22 by the groups of an instance (read from moto directly)."""
    ec2 = cloud.client()
    desc = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    groups = [g["GroupId"] for g in desc["SecurityGroups"]]
    found = ec2.describe_security_groups(GroupIds=groups)["SecurityGroups"]
    return {
        r["CidrIp"]
        for g in found
        for p in g["IpPermissions"]
        if p.get("FromPort") == 22
        for r in p.get("IpRanges", [])
    }
