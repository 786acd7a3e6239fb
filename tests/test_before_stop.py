"""``before_stop``: work saved on the instance before any stop, and a stop never blocked by it.

Pure parts (the setting, the parameters, the lib0 messages, the outcome) are tested without a
host. The runner (``before_stop.py run``) is tested for real as a subprocess: a failing and a
hanging command. The watchdog is tested for real (its stop command here is harmless, never a
shutdown). The save itself is tested against a real instance host (a private sshd on loopback),
a real ``jupyter server`` with jupyter-collaboration whose own autosave is OFF
(``YDocExtension.document_save_delay = None``, see ``turn_autosave_off`` in
:mod:`jupyter_ec2.testing.collab`), and a collaboration client (``collab_editor.py``) that
edits the notebook's shared document the way JupyterLab does when a user types; without
before_stop the edit never reaches the disk, which each test checks first.
The idle stop is proven with the instance's own installed watchdog and before-stop step, run
with a short idle time and a harmless stop command (a copy of the notebook as it is on disk).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jupyter_ec2.errors import ValidationError
from jupyter_ec2.provision import Provisioner, remote_paths, watchdog
from jupyter_ec2.provision import before_stop as runner
from jupyter_ec2.provision.params import build_params, validate_before_stop
from jupyter_ec2.provision.stop_step import parse_outcome, remote_command
from jupyter_ec2.testing.collab import (
    has_collaboration_wheels,
    make_collab_env,
    remove_collab_env,
    turn_autosave_off,
)

RUNNER = Path(runner.__file__)
EDITOR = Path(__file__).with_name("collab_editor.py")


# -- the setting and the parameters ---------------------------------------------------------------


def test_before_stop_values_and_refusals():
    # Given the three kinds of value
    # Then each becomes the step the instance runs
    assert validate_before_stop("save-notebooks") == {"action": "save-notebooks", "command": ""}
    assert validate_before_stop("") == {"action": "nothing", "command": ""}
    assert validate_before_stop(" sync-my-work --fast ") == {
        "action": "command",
        "command": "sync-my-work --fast",
    }
    # And a second line or a non-string is refused, naming the field, in config too
    for bad in ["echo a\nreboot", 3]:
        with pytest.raises(ValidationError) as err:
            validate_before_stop(bad)
        assert err.value.field == "before_stop"
    with pytest.raises(ValidationError):
        Provisioner(before_stop="a\nb")
    with pytest.raises(ValidationError):
        Provisioner(before_stop_timeout=0)


def _params(**overrides):
    from jupyter_ec2.keys import generate_ed25519

    values = dict(
        instance_id="i-0123456789abcdef0",
        base_url="/",
        token="a" * 64,
        authorized_keys=[generate_ed25519().public_openssh],
        idle_stop_command="touch /tmp/x",
    )
    values.update(overrides)
    return build_params(**values)


def test_save_notebooks_adds_collaboration_to_pip_and_conda_environments_only():
    # Given the default before_stop (save-notebooks)
    pip = _params(environment={"kind": "pip", "packages": ["numpy"]})
    conda = _params(environment={"kind": "conda", "packages": []})
    existing = _params(environment={"kind": "existing", "python": "/opt/py/bin/python"})
    pinned = _params(environment={"kind": "pip", "packages": ["jupyter_collaboration==5.0.4"]})
    # Then pip and conda environments get jupyter-collaboration (once), existing ones nothing
    assert pip["environment"]["packages"] == ["numpy", "jupyterlab", "jupyter-collaboration"]
    assert "jupyter-collaboration" in conda["environment"]["packages"]
    assert "packages" not in existing["environment"]
    assert pinned["environment"]["packages"] == ["jupyter_collaboration==5.0.4", "jupyterlab"]
    # And the step travels to the instance with its timeout
    assert pip["before_stop"] == {"action": "save-notebooks", "command": "", "timeout": 60.0}
    # When before_stop is a command or nothing
    command = _params(environment={"kind": "pip"}, before_stop="true", before_stop_timeout=5)
    # Then nothing is added to the environment
    assert command["environment"]["packages"] == ["jupyterlab"]
    assert command["before_stop"] == {"action": "command", "command": "true", "timeout": 5.0}


def test_lib0_messages_are_those_jupyterlab_sends():
    # Given the save request JupyterLab sends for Ctrl+S (RAW = 2, "save", a request id)
    # Then the bytes are lib0's: var-uint type, var-string, var-uint id
    assert runner.save_request(1) == b"\x02\x04save\x01"
    assert runner.var_uint(300) == b"\xac\x02"
    assert runner.read_var_uint(b"\xac\x02", 0) == (300, 2)
    # And the server's RAW JSON answer is read back
    body = json.dumps({"type": "save", "responseTo": 1, "status": "success"})
    assert runner.raw_json(runner.var_uint(2) + runner.var_string(body))["status"] == "success"
    assert runner.raw_json(b"\x00\x01") is None


def test_outcome_parsing_and_the_remote_command():
    # Given the runner's JSON line after other output
    good = parse_outcome(["noise", '{"ok": true, "detail": "saved 1"}'], 0)
    # Then it is the outcome; anything else is a failure quoting what came back
    assert good == {"ok": True, "detail": "saved 1"}
    assert parse_outcome(["sudo: a password is required"], 1) == {
        "ok": False,
        "detail": "sudo: a password is required",
    }
    assert parse_outcome([], 255)["detail"] == "exit status 255"
    # And the remote command names only the instance's own wrapper, quoted
    command = remote_command("i-0123456789abcdef0")
    assert "/var/lib/jupyter-ec2/i-0123456789abcdef0/before-stop" in command
    with pytest.raises(ValidationError):
        remote_command("i-0; reboot")


# -- the runner, for real --------------------------------------------------------------------------


def _run(settings: dict, tmp_path: Path) -> dict:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    done = subprocess.run(
        [sys.executable, str(RUNNER), "run", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr  # never a failing exit: the stop must go on
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_runner_reports_a_failing_command_and_kills_a_hanging_one(tmp_path):
    # Given a command that fails
    failed = _run(
        {"action": "command", "command": "echo no disk; exit 7", "timeout": 30,
         "workdir": str(tmp_path)},
        tmp_path,
    )  # fmt: skip
    # Then the outcome says so, with its output
    assert failed["ok"] is False
    assert "exit status 7" in failed["detail"] and "no disk" in failed["detail"]
    # Given a command that hangs past the timeout (it would write a marker if let finish)
    marker = tmp_path / "finished"
    hanging = _run(
        {"action": "command", "command": f"sleep 20; touch {shlex.quote(str(marker))}",
         "timeout": 1, "workdir": str(tmp_path)},
        tmp_path,
    )  # fmt: skip
    # Then it is reported as timed out, and its whole process group is gone
    assert hanging["ok"] is False
    assert "timed out after 1 s" in hanging["detail"]
    assert hanging["seconds"] < 20
    time.sleep(0.2)
    assert not marker.exists()
    # And a command that works is reported ok, run in the work directory
    done = _run(
        {"action": "command", "command": "pwd", "timeout": 30, "workdir": str(tmp_path)},
        tmp_path,
    )
    assert done == {**done, "ok": True, "action": "command", "detail": str(tmp_path)}
    # And nothing to do is ok
    assert _run({"action": "nothing"}, tmp_path)["ok"] is True


def test_watchdog_runs_before_stop_first_and_stops_even_when_it_fails(tmp_path):
    # Given a watchdog whose before-stop step fails and whose stop command is harmless
    order = tmp_path / "order"
    settings = tmp_path / "before_stop.json"
    settings.write_text(json.dumps({
        "action": "command", "command": f"echo before >> {order}; exit 3", "timeout": 10,
        "workdir": str(tmp_path),
    }))  # fmt: skip
    dog = watchdog.Watchdog({
        "instance_id": "i-0123456789abcdef0",
        "config_file": str(tmp_path / "missing.json"),
        "status_file": str(tmp_path / "status.json"),
        "idle_stop_minutes": 1,
        "command": ["/bin/sh", "-c", f"echo stop >> {order}"],
        "before_stop": [sys.executable, str(RUNNER), "run", str(settings)],
        "before_stop_timeout": 10,
    })  # fmt: skip
    # When the idle time is over
    dog.run_command(time.time())
    # Then the step ran, then the stop command ran anyway, and the failure is in the status
    assert order.read_text().split() == ["before", "stop"]
    assert dog.last_before_stop["ok"] is False
    assert "exit status 3" in dog.last_before_stop["detail"]
    dog.write_status(watchdog.Reading(False), time.time())
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["last_before_stop"]["ok"] is False
    assert status["last_command"]["exit_code"] == 0


# -- the save, on a real instance host and a real collaboration server ----------------------------

needs_host = [
    pytest.mark.skipif(os.geteuid() != 0, reason="instance hosts create users: run as root"),
    pytest.mark.skipif(
        not os.access("/usr/sbin/sshd", os.X_OK), reason="OpenSSH's sshd is missing"
    ),
    pytest.mark.skipif(
        not has_collaboration_wheels(), reason="the wheel mirror has no jupyter-collaboration"
    ),
]


@pytest.fixture(scope="module")
def collab_python():
    """An interpreter with JupyterLab and jupyter-collaboration."""
    base = Path(f"/tmp/jec2-collab-{secrets.token_hex(4)}")
    try:
        yield make_collab_env(base)
    finally:
        remove_collab_env(base)


def _notebook(path: Path, source: str, owner: str) -> None:
    cell = {"cell_type": "code", "source": source, "metadata": {}, "outputs": [],
            "execution_count": None, "id": "c1"}  # fmt: skip
    nb = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    subprocess.run(["chown", f"{owner}:", str(path)], check=True)


def _sources(path: Path) -> str:
    return "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])


def _edit_unsaved(python: Path, url: str, token: str, name: str, text: str, path: Path,
                  server_log: Path) -> None:  # fmt: skip
    """Edit through the shared document, then check the edit did NOT reach the disk."""
    done = subprocess.run([str(python), str(EDITOR), url, token, name, text], timeout=60,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-1500:] + server_log.read_text()[-3000:]
    time.sleep(2.5)  # longer than the default autosave delay (1 s): it is off here
    assert text not in _sources(path), "the server saved by itself: the test proves nothing"


def _marked(marks):
    def apply(test):
        for mark in marks:
            test = mark(test)
        return test

    return apply


@pytest.mark.slow
@_marked(needs_host)
@pytest.mark.parametrize("how", ["ssh", "idle-stop"])
def test_unsaved_edits_are_saved_before_the_stop(how, collab_python, tmp_path):
    from test_provision import (  # the instance-host fixtures' helpers
        Leftovers,
        SSHHost,
        SSHTarget,
        generate_ed25519,
        generate_host_key,
        make_provisioner,
        server_url,
        wait_for,
        wait_until_serving,
    )

    leftovers = Leftovers()
    client_key = generate_ed25519()
    host = SSHHost(tmp_path / "host", generate_host_key(), [client_key.public_openssh],
                   login_user="root")  # fmt: skip
    host.start()
    try:
        target = SSHTarget("127.0.0.1", host.host_public_key, client_key, port=host.port)
        instance_id, user = leftovers.new()
        # Given an instance whose JupyterLab has jupyter-collaboration (its autosave turned
        # off) and the default before_stop, save-notebooks
        provisioner = make_provisioner(
            user, "/bin/true", environment={"kind": "existing", "python": str(collab_python)}
        )
        result = provisioner.provision(target, instance_id, "/")
        wait_until_serving(result)
        turn_autosave_off(instance_id)
        notebook = Path(os.path.expanduser(f"~{user}")) / "notebooks" / "work.ipynb"
        _notebook(notebook, "x = 1", user)
        # And a notebook with unsaved changes in the server's shared document
        paths = remote_paths(instance_id)
        _edit_unsaved(collab_python, server_url(result), result.token, "work.ipynb",
                      "answer = 42", notebook, Path(paths.server_log))  # fmt: skip
        if how == "ssh":
            # When the extension runs the step before Stop/Terminate (over SSH)
            outcome = provisioner.run_before_stop(target, instance_id)
            # Then the edit is on disk, and the outcome says what was saved
            assert outcome["ok"] is True, outcome
            assert "saved 1 notebook(s): work.ipynb" in outcome["detail"]
            assert "answer = 42" in _sources(notebook)
            # And a second run finds nothing unsaved and writes nothing
            again = provisioner.run_before_stop(target, instance_id)
            assert "saved 0 notebook(s); 1 without unsaved changes" in again["detail"]
        else:
            # When the instance's own watchdog finds it idle (its installed settings, with a
            # short idle time and a harmless stop command that copies the notebook on disk)
            settings = json.loads(Path(paths.watchdog_settings).read_text())
            snapshot = tmp_path / "at-stop.ipynb"
            settings.update(
                idle_stop_minutes=0.03, interval=0.3,
                command=["/bin/cp", str(notebook), str(snapshot)],
                status_file=str(tmp_path / "status.json"), pid_file=str(tmp_path / "wd.pid"),
            )  # fmt: skip
            (tmp_path / "wd.json").write_text(json.dumps(settings))
            log = tmp_path / "wd.log"
            with log.open("w") as out:
                dog = subprocess.Popen(
                    ["/usr/bin/python3", str(Path(paths.state_dir) / "watchdog.py"),
                     str(tmp_path / "wd.json")],
                    stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            try:
                wait_for(snapshot.exists, 60, "the idle stop command")
            finally:
                dog.terminate()
                dog.wait(timeout=30)
            # Then the notebook was saved before the stop command ran, and the log says so
            assert "answer = 42" in _sources(snapshot)
            assert "before stop: done (saved 1 notebook(s): work.ipynb" in log.read_text()
    finally:
        leftovers.remove()
        host.stop()
