"""Provisioning's pure parts: parameters, the remote Jupyter config, input checks, the idle
clock and the SSH diagnosis — no SSH, no host. The property test round-trips values through
``setup.sh``'s own JSON reader on this machine (``--print-params``), which runs nothing else.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_ec2.errors import ValidationError
from jupyter_ec2.keys import generate_ed25519
from jupyter_ec2.models import validate_package_spec
from jupyter_ec2.provision import IdleStatus, Provisioner, SSHTarget
from jupyter_ec2.provision import watchdog as wd
from jupyter_ec2.provision.params import (
    build_jupyter_config,
    build_params,
    flatten_params,
    new_token,
    params_json,
    remote_base_url,
    remote_paths,
)
from jupyter_ec2.provision.ssh import (
    ConnectFacts,
    ConnectFailure,
    diagnose,
    disabled_host_key_algorithms,
    parse_hop,
    resolve_host,
)

SETUP_SH = Path(str(resources.files("jupyter_ec2.provision").joinpath("setup.sh")))
IID = "i-0123456789abcdef0"
TOKEN = "a" * 64
KEY = generate_ed25519()
ARGON2 = (
    "argon2:$argon2id$v=19$m=10240,t=10,p=8$UW+kIB0eocbVhXcw9Xvg0Q"
    "$BTGLcuGLouBzeIcR6DV1S+fKNPHUkSR1deeuZeN0y9s"
)


def params(**overrides):
    """Valid parameters, with ``overrides``."""
    values = {
        "instance_id": IID,
        "base_url": "/",
        "token": TOKEN,
        "authorized_keys": [KEY.public_openssh],
        "login_user": "ubuntu",
        "notebook_user": "jupyter",
        "idle_stop_command": "touch /tmp/x",
        "environment": {"kind": "existing", "python": "/opt/py/bin/python"},
        "before_stop": "",  # tests/test_before_stop.py covers the default, save-notebooks
    }
    values.update(overrides)
    return build_params(**values)


def print_params(path: Path) -> dict:
    """What setup.sh holds after reading the parameter file."""
    done = subprocess.run(
        ["bash", str(SETUP_SH), "--print-params", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


# -- the remote Jupyter config --------------------------------------------------------------------


def test_jupyter_config_is_loopback_tokened_and_under_the_proxy_path():
    # Given a local server at /user/alice/ and a fresh token
    token = new_token()
    # When the remote config is built
    config = build_jupyter_config(instance_id=IID, base_url="/user/alice/", token=token, port=8123)
    # Then it binds loopback, uses the token and the proxied base_url, opens no browser
    app = config["ServerApp"]
    assert app["ip"] == "127.0.0.1"
    assert app["port"] == 8123
    assert app["port_retries"] == 0
    assert app["base_url"] == f"/user/alice/jupyter-ec2/remote/{IID}/"
    assert app["root_dir"] == "~/notebooks"
    assert app["open_browser"] is False
    assert app["allow_root"] is False
    assert "certfile" not in app
    assert config["IdentityProvider"]["token"] == token
    assert "PasswordIdentityProvider" not in config
    assert config["MappingKernelManager"]["cull_idle_timeout"] == 0
    assert config["MappingKernelManager"]["cull_busy"] is False


def test_new_tokens_are_32_random_bytes():
    # Given two fresh tokens
    first, second = new_token(), new_token()
    # Then each is 64 hex digits (32 bytes from secrets) and they differ
    assert len(first) == 64 and int(first, 16) >= 0
    assert first != second


def test_jupyter_config_options_tls_password_root_and_culling():
    # Given TLS, an argon2 password hash, a root notebook user and culling
    config = build_jupyter_config(
        instance_id=IID,
        base_url="/",
        token=TOKEN,
        notebook_user="root",
        password_hash=ARGON2,
        tls=True,
        kernel_cull_idle_seconds=600,
    )
    # Then each shows up where jupyter_server reads it
    app = config["ServerApp"]
    assert app["certfile"] == f"/var/lib/jupyter-ec2/{IID}/tls/cert.pem"
    assert app["keyfile"] == f"/var/lib/jupyter-ec2/{IID}/tls/key.pem"
    assert app["allow_root"] is True
    assert config["PasswordIdentityProvider"]["hashed_password"] == ARGON2
    assert config["MappingKernelManager"]["cull_idle_timeout"] == 600
    assert config["MappingKernelManager"]["cull_interval"] == 60


def test_everything_on_the_host_is_named_after_the_instance():
    # Given an instance id
    paths = remote_paths(IID)
    # Then every path and service name holds it (so several instances share one host)
    for value in vars(paths).values():
        assert IID in value
    assert paths.service_name == f"jupyter-ec2-{IID}"
    assert remote_base_url("/", IID) == f"/jupyter-ec2/remote/{IID}/"


# -- the parameter file ---------------------------------------------------------------------------


def test_pip_environment_gets_jupyterlab_once():
    # Given pip environments with and without a jupyterlab spec
    plain = params(environment={"kind": "pip", "packages": ["numpy>=2"]})
    pinned = params(environment={"kind": "pip", "packages": ["JupyterLab>=4.2"]})
    # Then jupyterlab is added only where it is missing
    assert plain["environment"]["packages"] == ["numpy>=2", "jupyterlab"]
    assert pinned["environment"]["packages"] == ["JupyterLab>=4.2"]


def test_conda_specs_are_narrowed_to_what_conda_understands():
    # Given a conda environment with version constraints
    built = params(environment={"kind": "conda", "packages": ["numpy>=1.26,<3", "scipy"]})
    # Then the specs reach conda as name + constraints, with jupyterlab and the default installer
    assert built["environment"]["packages"] == ["numpy<3,>=1.26", "scipy", "jupyterlab"]
    assert built["environment"]["installer_url"] == ""
    # And extras, markers and ~= (which conda lacks) are refused, naming the field
    for bad in ["numpy[extra]", 'numpy; python_version < "3.12"', "numpy~=1.2"]:
        with pytest.raises(ValidationError) as err:
            params(environment={"kind": "conda", "packages": [bad]})
        assert err.value.field == "environment.packages"


def test_params_carry_the_stop_command_as_words_and_the_version():
    # Given a stop command with quoting
    built = params(idle_stop_command="sudo shutdown -h now 'idle stop'")
    # Then it travels as a word list, never as a command line
    assert built["idle_stop_command"] == ["sudo", "shutdown", "-h", "now", "idle stop"]
    assert built["version"] == 1
    assert built["state_dir"] == f"/var/lib/jupyter-ec2/{IID}"
    assert json.loads(params_json(built)) == built


MB = "x" * (1024 * 1024)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"notebook_user": "alice; rm -rf /"}, "notebook_user"),
        ({"notebook_user": "alice\nroot"}, "notebook_user"),
        ({"notebook_user": "root"}, "notebook_user"),
        ({"notebook_user": "Alice"}, "notebook_user"),
        ({"notebook_user": MB}, "notebook_user"),
        ({"login_user": "$(id)"}, "login_user"),
        (
            {"environment": {"kind": "pip", "packages": ["--index-url http://x"]}},
            "environment.packages",
        ),
        ({"environment": {"kind": "pip", "packages": ["numpy\nrm -rf /"]}}, "environment.packages"),
        ({"environment": {"kind": "pip", "packages": ["numpy; rm -rf /"]}}, "environment.packages"),
        ({"environment": {"kind": "pip", "packages": [MB]}}, "environment.packages"),
        (
            {"environment": {"kind": "pip", "packages": ["x @ http://evil/x.whl"]}},
            "environment.packages",
        ),
        ({"environment": {"kind": "existing", "python": "python3"}}, "environment.python"),
        (
            {"environment": {"kind": "existing", "python": "/opt/$(id)/python"}},
            "environment.python",
        ),
        (
            {"environment": {"kind": "conda", "installer_url": "http://x/m.sh"}},
            "environment.installer_url",
        ),
        ({"environment": {"kind": "docker"}}, "environment.kind"),
        ({"idle_stop_command": MB}, "idle_stop_command"),
        ({"idle_stop_command": "touch /x\nreboot"}, "idle_stop_command"),
        ({"idle_stop_command": "touch 'unterminated"}, "idle_stop_command"),
        ({"idle_stop_command": "$(reboot)"}, "idle_stop_command"),
        ({"idle_stop_command": "   "}, "idle_stop_command"),
        ({"base_url": "no-slash"}, "base_url"),
        ({"base_url": "/a\n/"}, "base_url"),
        ({"base_url": "/a/../b/"}, "base_url"),
        ({"base_url": "/" + MB + "/"}, "base_url"),
        ({"token": "short"}, "token"),
        ({"token": "a" * 60 + "; rm"}, "token"),
        ({"password_hash": "sha1:abcdef:0123456789abcdef"}, "password_hash"),
        ({"password_hash": "plain-text-password"}, "password_hash"),
        ({"wheel_dir": "relative/dir"}, "wheel_dir"),
        ({"wheel_dir": "/opt/../etc"}, "wheel_dir"),
        ({"wheel_dir": "/opt/wheels dir"}, "wheel_dir"),
        ({"instance_id": "i-123; rm"}, "instance_id"),
        ({"instance_id": "../../etc"}, "instance_id"),
        ({"authorized_keys": ["not a key"]}, "authorized_keys"),
        ({"authorized_keys": []}, "authorized_keys"),
        ({"port": -1}, "remote_port"),
        ({"port": True}, "remote_port"),
        ({"idle_stop_minutes": -1}, "idle_stop_minutes"),
        ({"idle_stop_minutes": float("nan")}, "idle_stop_minutes"),
        ({"kernel_cull_idle_seconds": -5}, "kernel_cull_idle_seconds"),
        ({"ready_timeout": 0}, "ready_timeout"),
    ],
)
def test_hostile_or_bad_inputs_are_refused_naming_the_field(overrides, field):
    # Given one bad value among valid ones
    # When the parameters are built
    with pytest.raises(ValidationError) as err:
        params(**overrides)
    # Then the error names that field
    assert err.value.field == field
    assert err.value.status == 400


def test_provisioner_traits_refuse_bad_values_naming_the_field():
    # Given hostile or weak configuration values
    cases = [
        ({"notebook_user": "alice; rm -rf /"}, "notebook_user"),
        (
            {"environment": {"kind": "pip", "packages": ["--index-url http://x"]}},
            "environment.packages",
        ),
        ({"password_hash": "sha1:aa:bb"}, "password_hash"),
        ({"idle_stop_command": "reboot\nnow"}, "idle_stop_command"),
        ({"wheel_dir": "wheels"}, "wheel_dir"),
        ({"remote_port": 70000}, "remote_port"),
        ({"connect_timeout": -1}, "connect_timeout"),
    ]
    for values, field in cases:
        # When a Provisioner is configured with it
        with pytest.raises(ValidationError) as err:
            Provisioner(**values)
        # Then the error names the trait
        assert err.value.field == field


def test_root_notebook_user_only_when_allowed():
    # Given a Provisioner whose notebook user is root
    target = SSHTarget("127.0.0.1", KEY.public_openssh, KEY)
    refused = Provisioner(notebook_user="root")
    allowed = Provisioner(notebook_user="root", allow_root_notebook_user=True)
    # When parameters are built, root is refused unless explicitly allowed
    with pytest.raises(ValidationError) as err:
        refused.build_params(target, IID, "/", token=TOKEN)
    assert err.value.field == "notebook_user"
    built = allowed.build_params(target, IID, "/", token=TOKEN)
    assert built["jupyter_config"]["ServerApp"]["allow_root"] is True


def test_every_provisioner_trait_has_help_and_the_documented_defaults():
    # Given the Provisioner class
    traits = Provisioner.class_traits(config=True)
    # Then every configurable trait explains itself
    assert all(trait.help for trait in traits.values())
    # And the defaults are DESIGN.md §3's
    p = Provisioner()
    assert p.login_user == "ubuntu"
    assert p.notebook_user == "jupyter"
    assert p.environment == {"kind": "pip", "packages": ["jupyterlab"]}
    assert p.idle_stop_minutes == 60
    assert p.idle_stop_command == "sudo shutdown -h now"
    assert p.ssh_config_file is None
    assert p.tls is False
    assert p.password_hash is None
    assert p.remote_port == 0


def test_flatten_params_shape():
    # Given nested parameters
    flat = flatten_params({"a": {"b": [1, "x"]}, "t": True, "f": False, "n": None, "v": 0.5})
    # Then lists give a count and items, and scalars their text
    assert flat == {
        "a.b.#": "2",
        "a.b.0": "1",
        "a.b.1": "x",
        "t": "true",
        "f": "false",
        "n": "",
        "v": "0.5",
    }


# -- setup.sh reads values as data ---------------------------------------------------------------


def test_setup_sh_is_valid_bash():
    # Given the shipped script
    # When bash parses it without running it
    done = subprocess.run(["bash", "-n", str(SETUP_SH)], capture_output=True, check=False)
    # Then it is valid
    assert done.returncode == 0, done.stderr


def test_shell_syntax_in_values_reaches_the_script_as_plain_data(tmp_path):
    # Given values full of shell syntax, in fields that allow it
    trap = tmp_path / "pwned"
    built = params(
        idle_stop_command=f"touch '$(touch {trap})' '`touch {trap}`' \"; rm -rf /\" '\\n'",
        environment={
            "kind": "pip",
            "packages": [f"numpy; python_version < '$(touch {trap})'"],
        },
    )
    path = tmp_path / "params.json"
    path.write_bytes(params_json(built))
    # When setup.sh reads the parameter file
    seen = print_params(path)
    # Then it holds exactly the values sent, and nothing was executed
    assert seen == flatten_params(built)
    assert seen["idle_stop_command.1"] == f"$(touch {trap})"
    assert not trap.exists()


def test_setup_sh_refuses_a_parameter_file_of_another_version(tmp_path):
    # Given a parameter file of an unknown version
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"version": 2, "notebook_user": "x"}))
    # When setup.sh reads it
    done = subprocess.run(
        ["bash", str(SETUP_SH), "--print-params", str(path)], capture_output=True, check=False
    )
    # Then it refuses
    assert done.returncode != 0


_NAME = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9._-]{0,10}[A-Za-z0-9])?\Z")
_VERSION = st.from_regex(r"\A[0-9]{1,3}(?:\.[0-9]{1,3}){0,2}\Z")
_MARKERS = st.sampled_from(
    [
        "",
        '; python_version < "3.13"',
        " ; sys_platform == 'linux' and os_name != \"nt\"",
        "; extra == 'a b $(id) `id`'",
    ]
)


def _spec(parts):
    name, extras, op, version, marker = parts
    extra = f"[{','.join(extras)}]" if extras else ""
    constraint = f"{op}{version}" if op else ""
    return f"{name}{extra}{constraint}{marker}"


def _valid_spec(spec):
    try:
        validate_package_spec(spec)
    except ValidationError:
        return False
    return True


PACKAGE = (
    st.tuples(
        _NAME,
        st.lists(_NAME, max_size=2),
        st.sampled_from(["", "==", ">=", "<=", "!=", "~=", ">", "<"]),
        _VERSION,
        _MARKERS,
    )
    .map(_spec)
    .filter(_valid_spec)
)

WORD = st.text(
    alphabet=st.characters(categories=["L", "M", "N", "P", "S"], include_characters=" "),
    min_size=1,
    max_size=12,
)
COMMAND = st.lists(WORD, max_size=4).map(lambda words: shlex.join(["touch", *words]))
USER = st.from_regex(r"\A[a-z_][a-z0-9_-]{0,31}\Z").filter(lambda u: u != "root")
SEGMENT = st.from_regex(r"\A[A-Za-z0-9._~%!$&'()*+,;=:@-]{1,10}\Z").filter(
    lambda s: s not in (".", "..")
)
BASE_URL = st.lists(SEGMENT, max_size=3).map(lambda s: "/" + "".join(x + "/" for x in s))
ENVIRONMENT = st.one_of(
    st.builds(lambda p: {"kind": "pip", "packages": p}, st.lists(PACKAGE, max_size=4)),
    st.builds(
        lambda p: {"kind": "existing", "python": p},
        st.from_regex(r"\A(?:/[A-Za-z0-9._+-]{1,12}){1,4}\Z").filter(
            lambda p: not any(part in (".", "..") for part in p.split("/"))
        ),
    ),
)
PASSWORD = st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32)).map(
    lambda sh: (
        "argon2:$argon2id$v=19$m=10240,t=10,p=8$"
        + base64.b64encode(sh[0]).decode().rstrip("=")
        + "$"
        + base64.b64encode(sh[1]).decode().rstrip("=")
    )
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    user=USER,
    environment=ENVIRONMENT,
    command=COMMAND,
    base_url=BASE_URL,
    token=st.from_regex(r"\A[A-Za-z0-9_-]{43,80}\Z"),
    minutes=st.one_of(st.integers(0, 10080), st.floats(0, 10080, allow_nan=False)),
    port=st.integers(0, 65535),
    tls=st.booleans(),
    password=st.one_of(st.none(), PASSWORD),
)
def test_property_every_valid_value_reaches_the_script_unchanged(
    tmp_path, user, environment, command, base_url, token, minutes, port, tls, password
):
    # Given arbitrary valid values
    built = params(
        notebook_user=user,
        environment=environment,
        idle_stop_command=command,
        base_url=base_url,
        token=token,
        idle_stop_minutes=minutes,
        port=port,
        tls=tls,
        password_hash=password,
    )
    path = tmp_path / "params.json"
    path.write_bytes(params_json(built))
    # When setup.sh reads the parameter file with its own reader
    seen = print_params(path)
    # Then every value is there, unchanged
    assert seen == flatten_params(built)
    assert seen["notebook_user"] == user
    words = [seen[f"idle_stop_command.{i}"] for i in range(int(seen["idle_stop_command.#"]))]
    assert words == shlex.split(command)
    if environment["kind"] == "pip":
        count = int(seen["environment.packages.#"])
        packages = [seen[f"environment.packages.{i}"] for i in range(count)]
        assert packages[: len(environment["packages"])] == environment["packages"]
    assert seen["jupyter_config.IdentityProvider.token"] == token
    assert seen["jupyter_config.ServerApp.base_url"] == f"{base_url}jupyter-ec2/remote/{IID}/"


# -- the watchdog's idle clock --------------------------------------------------------------------


def test_idle_clock_counts_from_the_last_kernel_or_terminal_activity():
    # Given a clock of 60 s started at t=1000
    clock = wd.IdleClock(60, 1000.0)
    # When a terminal was active at t=1030 and nothing is busy
    clock.observe(wd.summarize([], [{"last_activity": "1970-01-01T00:17:10Z"}]), 1040.0)
    # Then the machine stops 60 s after that activity, not before
    assert clock.idle_since == 1030.0
    assert not clock.due(1089.0)
    assert clock.due(1090.0)


def test_idle_clock_never_stops_while_a_kernel_is_busy():
    # Given a clock of 60 s and a kernel busy for ten minutes with no new messages
    clock = wd.IdleClock(60, 0.0)
    busy = wd.summarize([{"execution_state": "busy", "last_activity": "1970-01-01T00:00:01Z"}], [])
    # When the watchdog polls during that time
    for now in range(0, 600, 5):
        clock.observe(busy, float(now))
        # Then it is never due
        assert not clock.due(float(now))


def test_idle_clock_ignores_an_unreachable_server_and_off_means_never():
    # Given a clock of 60 s and a server that does not answer
    clock = wd.IdleClock(60, 0.0)
    clock.observe(wd.Reading(False), 30.0)
    # Then the idle period still runs from the start
    assert clock.due(60.0)
    # And a clock of 0 minutes is never due
    assert not wd.IdleClock(0, 0.0).due(10**9)


def test_watchdog_parses_jupyter_timestamps():
    # Given the timestamp forms jupyter_server writes
    # Then each parses to a Unix time, and junk to None
    assert wd.parse_time("1970-01-01T00:01:00.000000Z") == 60.0
    assert wd.parse_time("1970-01-01T00:01:00+00:00") == 60.0
    assert wd.parse_time("yesterday") is None
    assert wd.poll_interval(3.0) == 0.5
    assert wd.poll_interval(3600.0) == 30.0


def test_idle_status_counts_down_on_the_local_clock():
    # Given a status written when the instance's clock said 1000, stopping at 1180
    status = IdleStatus.from_json(
        {
            "enabled": True,
            "idle_stop_minutes": 3,
            "idle_since": 1000,
            "stops_at": 1180,
            "now": 1000,
            "server": "up",
        },
        read_at=50.0,
    )
    # Then 30 s later on this machine's (different) clock, 150 s are left
    assert status.seconds_left(at=80.0) == 150.0
    assert status.minutes_left(at=80.0) == 2.5
    assert IdleStatus.from_json({"enabled": False}, read_at=0).seconds_left() is None


# -- SSH: config resolution and the diagnosis ------------------------------------------------------


def test_ssh_config_resolution(tmp_path):
    # Given an ssh_config with an alias, a jump and a catch-all
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host 203.0.113.7\n  HostName 127.0.0.1\n  Port 2222\n  User root\n"
        "  ProxyJump admin@bastion:2200\n\n"
        "Host *\n  HostName 127.0.0.1\n  Port 9\n"
    )
    # When hosts are resolved
    spec = resolve_host("203.0.113.7", config, default_user="ubuntu")
    other = resolve_host("198.51.100.1", config, default_user="ubuntu", user="explicit")
    # Then HostName, Port, User and ProxyJump come from the file; explicit values win
    assert (spec.hostname, spec.port, spec.user) == ("127.0.0.1", 2222, "root")
    assert spec.proxy_jump == ("admin@bastion:2200",)
    assert (other.hostname, other.port, other.user) == ("127.0.0.1", 9, "explicit")
    assert parse_hop("admin@bastion:2200") == ("admin", "bastion", 2200)
    assert parse_hop("[::1]:22") == (None, "::1", 22)


def test_only_the_pinned_key_type_is_offered():
    # Given an ed25519 pin
    disabled = disabled_host_key_algorithms("ssh-ed25519")
    # Then every other host key algorithm is disabled, and ed25519 is not
    assert "ssh-ed25519" not in disabled
    assert {"rsa-sha2-512", "ecdsa-sha2-nistp256", "ssh-rsa"} <= set(disabled)
    assert "rsa-sha2-256" not in disabled_host_key_algorithms("ssh-rsa")


def _failure(kind, **extra):
    values = dict(
        kind=kind,
        detail="x",
        host="203.0.113.7",
        address="203.0.113.7",
        port=22,
        user="ubuntu",
        attempts=12,
        elapsed=300.0,
    )
    values.update(extra)
    return ConnectFailure(**values)


@pytest.mark.parametrize(
    ("kind", "facts", "words"),
    [
        ("timeout", ConnectFacts(instance_state="stopped"), "stopped, not running"),
        (
            "timeout",
            ConnectFacts(instance_state="running", public_address=None),
            "no public address",
        ),
        (
            "timeout",
            ConnectFacts(
                instance_state="running",
                public_address="203.0.113.7",
                caller_address="198.51.100.20",
                allowed_cidrs=("192.0.2.1/32",),
                security_group="sg-1",
            ),
            "admits SSH only from 192.0.2.1/32, but this machine's address is 198.51.100.20",
        ),
        (
            "timeout",
            ConnectFacts(
                instance_state="running",
                public_address="203.0.113.7",
                caller_address="198.51.100.20",
                allowed_cidrs=("198.51.100.20/32",),
            ),
            "Nothing answered",
        ),
        ("refused", None, "refused the connection"),
        (
            "auth",
            ConnectFacts(instance_state="running", public_address="203.0.113.7"),
            "did not accept the managed key for user ubuntu",
        ),
        ("dns", None, "could not be resolved"),
    ],
)
def test_deadline_diagnosis_in_plain_words(kind, facts, words):
    # Given the last failure and what the caller knows
    # When the deadline passes
    text = diagnose(_failure(kind), facts)
    # Then the message names the likely cause, not "timed out"
    assert words in text
    assert "12 attempts over 300 s" in text


def test_watchdog_states_and_checks_the_python_it_needs():
    # Given the watchdog shipped to instances
    from jupyter_ec2.provision import watchdog

    # When its stated minimum and its check are read
    problem = watchdog.python_problem((3, 6, 15, "final", 0))

    # Then it claims 3.7 (datetime.fromisoformat is 3.7's), refuses 3.6 saying what to do,
    # and accepts this interpreter
    assert watchdog.MIN_PYTHON == (3, 7)
    assert "Python 3.7 or newer" in " ".join(watchdog.__doc__.split())
    assert "3.6" not in watchdog.__doc__
    assert problem is not None and "3.7" in problem and "3.6.15" in problem
    assert "idle_stop_minutes = 0" in problem
    assert watchdog.python_problem(sys.version_info) is None
    assert watchdog.main(["--check"]) == 0
