"""Keepalive: ``POST instances/{id}/keepalive`` postpones the idle auto-stop on the instance.

The watchdog's decision is tested pure; the request's validation on the simulated cloud with
the fakes of ``test_costs.py``; and the whole path end to end (slow) with real parts only: moto,
an OpenSSH sshd per instance, real provisioning that starts the real watchdog with a 15 s idle
timeout and a harmless stop command (it touches a file; nothing is ever shut down here).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import time
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_ec2.provision.watchdog import IdleClock, Reading, read_keepalive
from jupyter_ec2.testing.demo import IMAGE_PYTHON, remove_user, simulated_config

# -- the watchdog's decision, pure -------------------------------------------------------------


def test_a_keepalive_holds_off_the_stop_until_its_time():
    # Given a 15 s idle clock started at 1000 and a keepalive until 1000 + 3600
    clock = IdleClock(15.0, 1000.0)
    clock.keep_until = 4600.0
    clock.observe(Reading(True), 1020.0)
    # When the idle time has long passed / Then it is not due before the keepalive ends
    assert clock.stops_at == 4600.0
    assert not clock.due(1020.0) and not clock.due(4599.0)
    assert clock.due(4600.0)
    # And a keepalive already over changes nothing
    clock.keep_until = 900.0
    assert clock.stops_at == 1015.0


def test_the_keepalive_file_is_read_and_a_bad_one_ignored(tmp_path):
    # Given keepalive files, good and bad / Then only a number of seconds counts
    good = tmp_path / "keepalive.json"
    good.write_text(json.dumps({"until": 1234.5}))
    assert read_keepalive(str(good)) == 1234.5
    (tmp_path / "bad.json").write_text("{nope")
    assert read_keepalive(str(tmp_path / "bad.json")) is None
    (tmp_path / "list.json").write_text("[1]")
    assert read_keepalive(str(tmp_path / "list.json")) is None
    assert read_keepalive(str(tmp_path / "missing.json")) is None


# -- validation (simulated cloud, fake SSH layers) ---------------------------------------------


class TestValidation:
    """Bad keepalive bodies are a 400 naming the field (moto + the fakes of test_costs)."""

    @pytest.fixture
    def jp_server_config(self, jp_ec2_cloud, jp_ec2_config):
        """The fast configuration of the cost tests."""
        from test_costs import priced_config

        return priced_config(jp_ec2_cloud, jp_ec2_config)

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({}, "minutes"),
            ({"minutes": 0}, "minutes"),
            ({"minutes": 1441}, "minutes"),
            ({"minutes": 1.5}, "minutes"),
            ({"minutes": True}, "minutes"),
            ({"minutes": "60"}, "minutes"),
            ({"minutes": 60, "hours": 1}, "hours"),
            ([60], "body"),
        ],
    )
    async def test_bad_minutes_are_a_400_naming_the_field(self, jp_fetch, body, field):
        # Given any instance id / When the body is bad / Then 400 naming the field
        with pytest.raises(HTTPClientError) as caught:
            await jp_fetch(
                "jupyter-ec2", "api", "instances", "i-0123456789abcdef0", "keepalive",
                method="POST", body=json.dumps(body),
            )  # fmt: skip
        assert caught.value.code == 400
        assert json.loads(caught.value.response.body)["field"] == field


# -- end to end: the real watchdog on an sshd host -----------------------------------------------


@pytest.fixture(scope="module")
def jp_ec2_notebook_user():
    """A notebook user unique to this module; removed from this machine afterwards."""
    name = f"jec2k{secrets.token_hex(3)}"
    yield name
    remove_user(name)


@pytest.fixture
def idle_marker(tmp_path: Path) -> Path:
    """The file the (harmless) idle-stop command creates."""
    return tmp_path / "idle-stop-ran"


class TestOnTheInstance:
    """Keepalive through the real watchdog (slow)."""

    pytestmark = [
        pytest.mark.slow,
        pytest.mark.skipif(
            not Path(IMAGE_PYTHON).exists(), reason=f"{IMAGE_PYTHON} missing: run `make sim-image`"
        ),
    ]

    @pytest.fixture
    def jp_server_config(
        self, jp_ec2_cloud, jp_ec2_hosts, tmp_path, jp_ec2_notebook_user, idle_marker
    ):
        """The extension on the simulated cloud; the instance stops itself after 15 idle s."""
        config = simulated_config(
            jp_ec2_cloud,
            jp_ec2_hosts,
            tmp_path / "state",
            notebook_user=jp_ec2_notebook_user,
            idle_stop_command=f"touch {idle_marker}",
            profiles={
                "idle": {
                    "display_name": "Idle quickly",
                    "instance_type": "t3.small",
                    "idle_stop_minutes": 0.25,
                }
            },
        )
        config["ServerApp"]["allow_unauthenticated_access"] = False
        config["LaunchManager"] = {"poll_fast": 0.2, "poll_slow": 1.0, "idle_check_interval": 0.5}
        config["Provisioner"]["wheel_dir"] = str(tmp_path / "empty-wheels")
        (tmp_path / "empty-wheels").mkdir()
        return config

    async def _json(self, jp_fetch, *parts, method="GET", body=None):
        response = await jp_fetch(
            "jupyter-ec2", "api", *parts, method=method,
            body=None if body is None else json.dumps(body),
        )  # fmt: skip
        return response.code, json.loads(response.body)

    async def test_keepalive_moves_stops_at_by_an_hour_and_the_instance_keeps_running(
        self, jp_fetch, jp_serverapp, idle_marker
    ):
        manager = jp_serverapp.web_app.settings["jupyter_ec2_manager"]
        # Given a ready instance whose watchdog stops it after 15 idle seconds
        _, inst = await self._json(jp_fetch, "instances", method="POST", body={"profile": "idle"})
        iid = inst["id"]
        deadline = time.monotonic() + 180
        idle = None
        while idle is None or idle.get("seconds_left") is None:
            assert time.monotonic() < deadline, inst
            _, inst = await self._json(jp_fetch, "instances", iid)
            assert inst["phase"] != "failed", inst["error"]
            idle = inst["idle"]
            await asyncio.sleep(0.2)
        assert "keepalive" in inst["actions"]
        old_stops_at = dt.datetime.fromisoformat(idle["stops_at"])
        # When "Keep running 1 h" is asked
        code, kept = await self._json(
            jp_fetch, "instances", iid, "keepalive", method="POST", body={"minutes": 60}
        )
        # Then the answer's stops_at moved by an hour (less the seconds that were left)
        assert code == 200
        new_stops_at = dt.datetime.fromisoformat(kept["idle"]["stops_at"])
        moved = (new_stops_at - old_stops_at).total_seconds()
        assert 3600 - 20 <= moved <= 3600 + 5, moved
        assert kept["idle"]["seconds_left"] > 3500
        # And the instance does not stop at the old time: well past it, no stop command ran
        await asyncio.sleep(
            max(0.0, (old_stops_at - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 15
        )
        assert not idle_marker.exists()
        # And the watchdog's own status file (read over SSH) says it stops an hour later
        status = manager.records[iid].idle_status
        assert status is not None and status.get("keep_until") is not None
        assert status.stops_at - status.now > 3500
        _, inst = await self._json(jp_fetch, "instances", iid)
        assert inst["phase"] == "ready" and inst["idle"]["seconds_left"] > 3500
        await self._json(jp_fetch, "instances", iid, method="DELETE")
