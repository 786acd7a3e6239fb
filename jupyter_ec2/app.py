"""The jupyter-ec2 server extension: configuration, routes and the services behind them.

This module only wires: it validates the launch profiles once at start-up, builds the services
with ``parent=self`` so they read their own configuration sections, and registers the REST
handlers. The work happens in the layers it wires together.
"""

from __future__ import annotations

import os

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Dict, Enum, Unicode, default, validate

from ._version import __version__
from .handlers import ProfilesHandler
from .models import ProfileSet, load_profiles

API_PREFIX = "jupyter-ec2/api"


class EC2Launcher(ExtensionApp):
    """Launch profiles, the REST API and the background services of jupyter-ec2."""

    name = "jupyter_ec2"
    version = __version__
    description = __doc__
    load_other_extensions = True

    #: The routes this extension serves, relative to the server's base_url.
    routes = [
        (rf"/{API_PREFIX}/profiles", ProfilesHandler),
    ]

    profiles = Dict(
        default_value={},
        help="""Launch profiles, one launcher tile each: a mapping of profile name to its fields
        (display_name, region, instance_type, ami, volume_gb, spot, environment,
        idle_stop_minutes, tags). Unset fields come from EC2Backend.region and the Provisioner's
        environment and idle_stop_minutes. A profile with a bad field is logged and not served;
        the others still are. When empty, one built-in profile 'cpu' (t3.medium, 30 GB) is served.
        """,
    ).tag(config=True)

    default_profile = Unicode(
        "",
        help="The profile a launch uses when it names none. Empty: the first valid profile.",
    ).tag(config=True)

    open_mode = Enum(
        ["proxy", "direct"],
        default_value="proxy",
        help="""How "Open" reaches a remote notebook. 'proxy': through this server at
        {base_url}jupyter-ec2/remote/{id}/ (works behind JupyterHub or on a remote box).
        'direct': the forwarded 127.0.0.1 port with the token, for a browser on this machine.""",
    ).tag(config=True)

    state_dir = Unicode(
        help="""Where jupyter-ec2 keeps its state: the SSH key pair, pinned host keys, remote
        tokens and instance records, all in files only you can read (0600, directory 0700).""",
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.path.join(jupyter_data_dir(), "jupyter_ec2")

    @validate("state_dir")
    def _validate_state_dir(self, proposal) -> str:
        return os.path.abspath(os.path.expanduser(proposal["value"]))

    profile_set: ProfileSet

    def _profile_defaults(self) -> dict:
        """Fields a profile inherits from the other configurables' sections."""
        backend = self.config.get("EC2Backend", {})
        provisioner = self.config.get("Provisioner", {})
        return {
            "region": backend.get("region", "us-east-1"),
            "environment": provisioner.get(
                "environment", {"kind": "pip", "packages": ["jupyterlab"]}
            ),
            "idle_stop_minutes": provisioner.get("idle_stop_minutes", 60),
        }

    def load_profile_set(self) -> ProfileSet:
        """Validate the configured profiles, logging each one that is not served and why."""
        profile_set = load_profiles(self.profiles, self.default_profile, self._profile_defaults())
        for problem in profile_set.problems:
            self.log.error("jupyter-ec2: %s Fix it in your Jupyter config.", problem)
        if not profile_set.profiles:
            self.log.error("jupyter-ec2: no valid launch profile; nothing can be launched.")
        return profile_set

    def initialize_settings(self) -> None:
        """Validate the profiles once and share them with the handlers."""
        self.profile_set = self.load_profile_set()
        self.settings.update({"jupyter_ec2_profiles": self.profile_set})
        self.log.info(
            "jupyter-ec2 %s: %d launch profile(s): %s",
            __version__,
            len(self.profile_set.profiles),
            ", ".join(self.profile_set.profiles) or "none",
        )

    def initialize_handlers(self) -> None:
        """Register the REST routes."""
        self.handlers.extend(self.routes)

    async def stop_extension(self) -> None:
        """Nothing runs in the background yet; later layers close forwards and tasks here."""
