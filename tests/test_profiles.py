"""Launch profiles: validation at start-up and ``GET profiles``."""

from __future__ import annotations

import json
import logging

import pytest
from traitlets.config import Config

from jupyter_ec2.app import EC2Launcher
from jupyter_ec2.aws import EC2Backend
from jupyter_ec2.errors import ValidationError
from jupyter_ec2.models import BUILTIN_PROFILES, Profile, load_profiles
from jupyter_ec2.provision import Provisioner

DEFAULTS = {"region": "us-east-1", "environment": {"kind": "pip", "packages": []}}


async def test_get_profiles_serves_configured_profiles(jp_fetch):
    # Given a server configured with the cpu and gpu profiles (conftest)
    # When the profiles are asked for with the server's token
    response = await jp_fetch("jupyter-ec2", "api", "profiles")
    # Then both come back, validated and filled with defaults, with the configured default
    body = json.loads(response.body)
    assert response.code == 200
    assert body["default"] == "cpu"
    by_name = {p["name"]: p for p in body["profiles"]}
    assert list(by_name) == ["cpu", "gpu"]
    assert by_name["gpu"]["display_name"] == "GPU box"
    assert by_name["gpu"]["spot"] is True
    assert by_name["gpu"]["volume_gb"] == 100
    assert by_name["cpu"]["region"] == "us-east-1"
    assert by_name["cpu"]["ami"] == "ubuntu-24.04"
    assert by_name["cpu"]["idle_stop_minutes"] == 60


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"instance_type": "t3.medium", "colour": "blue"}, "colour"),
        ({"instance_type": "t3.medium", "volume_gb": -5}, "volume_gb"),
        ({"instance_type": "t3.medium", "volume_gb": 10**7}, "volume_gb"),
        ({"instance_type": "t3.medium", "volume_gb": True}, "volume_gb"),
        ({"instance_type": "t3.medium", "ami": "ami-xyz"}, "ami"),
        ({"instance_type": "t3.medium", "ami": "ubuntu-18.04"}, "ami"),
        ({"instance_type": "t3 medium"}, "instance_type"),
        ({"instance_type": "t3.medium", "region": "xx-nowhere-9"}, "region"),
        ({"instance_type": "t3.medium", "idle_stop_minutes": -1}, "idle_stop_minutes"),
        ({"instance_type": "t3.medium", "tags": {"aws:x": "y"}}, "tags"),
        ({"instance_type": "t3.medium", "environment": {"kind": "apt"}}, "environment.kind"),
        (
            {
                "instance_type": "t3.medium",
                "environment": {"kind": "pip", "packages": ["--index-url http://x"]},
            },
            "environment.packages",
        ),
        ({}, "instance_type"),
    ],
)
def test_bad_profile_names_the_field(values, field):
    # Given a profile with one bad field
    # When it is validated
    with pytest.raises(ValidationError) as caught:
        Profile.from_config("p1", values, DEFAULTS)
    # Then the error names that field
    assert caught.value.field == field
    assert caught.value.status == 400


def test_bad_profiles_are_skipped_and_good_ones_kept():
    # Given one good profile, one with a negative disk and one with an unknown key
    raw = {
        "good": {"instance_type": "t3.medium"},
        "neg": {"instance_type": "t3.medium", "volume_gb": -1},
        "odd": {"instance_type": "t3.medium", "flavour": "x"},
        "Bad Name": {"instance_type": "t3.medium"},
    }
    # When the set is loaded with a default that does not exist
    loaded = load_profiles(raw, "missing", DEFAULTS)
    # Then only the good profile is served and it becomes the default
    assert list(loaded.profiles) == ["good"]
    assert loaded.default == "good"
    # And each problem names its profile and field
    problems = {(p.profile, p.field) for p in loaded.problems}
    assert problems == {
        ("neg", "volume_gb"),
        ("odd", "flavour"),
        ("Bad Name", "profile"),
        ("missing", "default_profile"),
    }


def test_builtin_profile_when_none_configured():
    # Given no configured profiles
    # When the set is loaded
    loaded = load_profiles({}, "", DEFAULTS)
    # Then the built-in cpu profile is served as the default
    assert list(loaded.profiles) == list(BUILTIN_PROFILES)
    assert loaded.default == "cpu"
    assert loaded.problems == ()


def test_override_is_validated_and_prefixed():
    # Given a valid profile
    profile = Profile.from_config("cpu", {"instance_type": "t3.medium"}, DEFAULTS)
    # When a launch overrides the disk with a good and then a bad value
    bigger = profile.with_overrides({"volume_gb": 64})
    with pytest.raises(ValidationError) as caught:
        profile.with_overrides({"volume_gb": 2})
    # Then the good one applies and the bad one names the nested field
    assert bigger.volume_gb == 64
    assert profile.volume_gb == 30
    assert caught.value.field == "overrides.volume_gb"


class TestBadConfigAtStartup:
    """A server whose config holds bad profiles logs them and serves the rest."""

    @pytest.fixture
    def jp_ec2_config(self, tmp_path) -> dict:
        return {
            "profiles": {
                "ok": {"display_name": "OK", "instance_type": "t3.small"},
                "huge": {"instance_type": "t3.small", "volume_gb": 999999},
                "typo": {"instance_typ": "t3.small"},
            },
            "default_profile": "nope",
            "state_dir": str(tmp_path / "state"),
        }

    async def test_bad_profiles_not_served(self, jp_fetch):
        # Given a server started with one good and two bad profiles and an unknown default
        # When the profiles are asked for
        response = await jp_fetch("jupyter-ec2", "api", "profiles")
        body = json.loads(response.body)
        # Then only the good one is served, and it is the default
        assert [p["name"] for p in body["profiles"]] == ["ok"]
        assert body["default"] == "ok"

    def test_bad_profiles_logged(self, jp_ec2_config, caplog):
        # Given the extension configured with the same bad profiles
        app = EC2Launcher(config=Config({"EC2Launcher": jp_ec2_config}))
        app.log.propagate = True
        # When it validates them at start-up
        with caplog.at_level(logging.ERROR):
            app.load_profile_set(EC2Backend(parent=app), Provisioner(parent=app))
        # Then the log names each bad profile and its field
        text = caplog.text
        assert "profile 'huge' is not served: field 'volume_gb'" in text
        assert "profile 'typo' is not served: field 'instance_typ'" in text
        assert "field 'default_profile'" in text
