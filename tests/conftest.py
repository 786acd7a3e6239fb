"""Shared fixtures: a jupyter_server with jupyter-ec2 enabled, on the simulated cloud."""

from __future__ import annotations

import pytest

# nonroot_user (this directory) holds the session fixture of the Binder and user-mode demo tests.
pytest_plugins = [
    "pytest_jupyter.jupyter_server",
    "jupyter_ec2.testing.pytest_plugin",
    "nonroot_user",
]


@pytest.fixture
def jp_ec2_profiles() -> dict:
    """Two valid launch profiles, as a user would configure them."""
    return {
        "cpu": {"display_name": "CPU small", "instance_type": "t3.medium", "volume_gb": 30},
        "gpu": {
            "display_name": "GPU box",
            "instance_type": "g5.xlarge",
            "volume_gb": 100,
            "spot": True,
        },
    }


@pytest.fixture
def jp_ec2_config(jp_ec2_profiles: dict, tmp_path) -> dict:
    """The ``EC2Launcher`` section of the test server's config; tests may change it."""
    return {
        "profiles": jp_ec2_profiles,
        "default_profile": "cpu",
        "state_dir": str(tmp_path / "ec2-state"),
    }


@pytest.fixture
def jp_server_config(jp_ec2_config: dict) -> dict:
    """Enable jupyter-ec2 in the test server, with authentication on."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ec2": True},
            "allow_unauthenticated_access": False,
        },
        "EC2Launcher": jp_ec2_config,
    }
