"""The manager runs ``before_stop`` before Stop and Terminate, and never lets it block them.

FAKES (those of ``test_manager.py``: an in-memory EC2, a provisioner that only reports steps,
forwards that only keep a state), chosen through the extension's ``*_class`` traits, with a
provisioner whose ``run_before_stop`` records when it ran and can fail, raise or hang. The real
step over SSH against a real collaboration server is ``test_before_stop.py``.
"""

from __future__ import annotations

import time

import pytest
from test_manager import (  # noqa: F401 - fixtures used by name
    FakeBackend,
    FakeProvisioner,
    FakeTunnels,
    _reset_fakes,
    api,
    events,
    jp_ec2_manager_config,
    launch,
    manager,
    wait_for,
)

from jupyter_ec2.errors import SSHError

calls: list[str] = []


class RecordingBackend(FakeBackend):
    """FAKE EC2 that records when it was asked to stop or terminate."""

    def stop(self, ids, region=None):
        calls.append("ec2-stop")
        return super().stop(ids, region)

    def terminate(self, ids, region=None):
        calls.append("ec2-terminate")
        return super().terminate(ids, region)


class SavingProvisioner(FakeProvisioner):
    """FAKE provisioner whose before-stop step succeeds, fails, raises, or hangs."""

    mode = "ok"

    def run_before_stop(self, target, instance_id):
        calls.append("before-stop")
        if SavingProvisioner.mode == "fail":
            return {"ok": False, "detail": "timed out after 60 s"}
        if SavingProvisioner.mode == "raise":
            raise SSHError("Could not reach the instance over SSH.")
        if SavingProvisioner.mode == "hang":
            time.sleep(0.5)  # a worker thread: the event loop keeps serving meanwhile
        return {"ok": True, "detail": "saved 1 notebook(s): work.ipynb"}


@pytest.fixture
def jp_server_config(jp_ec2_config, jp_ec2_manager_config, monkeypatch):  # noqa: F811
    """jupyter-ec2 on the fakes, with the recording backend and provisioner."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    calls.clear()
    SavingProvisioner.mode = "ok"
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ec2": True},
            "allow_unauthenticated_access": False,
        },
        "EC2Launcher": {
            **jp_ec2_config,
            "backend_class": RecordingBackend,
            "provisioner_class": SavingProvisioner,
            "tunnel_class": FakeTunnels,
        },
        "EC2Backend": {"region": "us-east-1"},
        "LaunchManager": jp_ec2_manager_config,
    }


async def _log_texts(jp_fetch, instance_id):
    code, body = await api(jp_fetch, "instances", instance_id, "log")
    assert code == 200
    return [line["text"] for line in body["lines"] if line["step"] == "before-stop"]


@pytest.mark.parametrize("action", ["stop", "terminate"])
async def test_before_stop_runs_before_ec2_is_asked(jp_fetch, manager, action):  # noqa: F811
    # Given a ready instance
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    # When it is stopped or terminated
    if action == "stop":
        code, _ = await api(jp_fetch, "instances", inst["id"], "stop", method="POST", body={})
    else:
        code, _ = await api(jp_fetch, "instances", inst["id"], method="DELETE")
    assert code == 202
    # Then the before-stop step ran first, and its outcome is in the instance log
    assert calls == ["before-stop", f"ec2-{action}"]
    texts = await _log_texts(jp_fetch, inst["id"])
    assert texts[-1] == "Before stop: saved 1 notebook(s): work.ipynb."


@pytest.mark.parametrize("mode", ["fail", "raise", "hang"])
async def test_a_failing_before_stop_is_logged_and_the_stop_goes_on(
    jp_fetch,
    manager,  # noqa: F811
    mode,
):
    # Given a ready instance whose before-stop step fails, cannot connect, or takes a while
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    SavingProvisioner.mode = mode
    # When it is stopped
    code, answer = await api(jp_fetch, "instances", inst["id"], "stop", method="POST", body={})
    # Then the stop was asked of EC2 all the same, and the instance goes to stopped
    assert code == 202, answer
    assert calls == ["before-stop", "ec2-stop"]
    await wait_for(jp_fetch, inst["id"], {"stopped"})
    # And the log says what went wrong (or what was saved)
    texts = await _log_texts(jp_fetch, inst["id"])
    if mode == "fail":
        assert texts[-1] == "Before stop failed (timed out after 60 s); stopping anyway."
    elif mode == "raise":
        assert texts[-1] == (
            "Before stop failed (Could not reach the instance over SSH.); stopping anyway."
        )
    else:
        assert texts[-1].startswith("Before stop: saved 1")


async def test_nothing_runs_for_a_stopped_instance_or_with_before_stop_off(
    jp_fetch,
    manager,  # noqa: F811
):
    # Given a stopped instance
    inst = await launch(jp_fetch)
    await wait_for(jp_fetch, inst["id"], {"ready"})
    await api(jp_fetch, "instances", inst["id"], "stop", method="POST", body={})
    await wait_for(jp_fetch, inst["id"], {"stopped"})
    calls.clear()
    # When it is terminated
    code, _ = await api(jp_fetch, "instances", inst["id"], method="DELETE")
    # Then no before-stop step is tried (nothing runs on a stopped machine)
    assert code == 202
    assert calls == ["ec2-terminate"]
    # Given before_stop = "" and a ready instance
    manager.provisioner.before_stop = ""
    other = await launch(jp_fetch)
    await wait_for(jp_fetch, other["id"], {"ready"})
    calls.clear()
    # When it is stopped, then nothing runs before EC2 is asked
    await api(jp_fetch, "instances", other["id"], "stop", method="POST", body={})
    assert calls == ["ec2-stop"]
