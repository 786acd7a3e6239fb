"""The jupyter-ec2 server extension: configuration, routes and the services behind them.

This module only wires: it validates the launch profiles once at start-up, builds the services
with ``parent=self`` so they read their own configuration sections, and registers the REST
handlers. The work happens in the layers it wires together.
"""

from __future__ import annotations

import os

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Dict, Enum, Type, Unicode, default, validate

from ._version import __version__
from .handlers import (
    InstanceActionHandler,
    InstanceHandler,
    InstanceLogHandler,
    InstancesHandler,
    ProfilesHandler,
)
from .models import ProfileSet, load_profiles
from .proxy import RemoteEndpoint, close_upstream_pool, remote_handlers

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
        (rf"/{API_PREFIX}/instances", InstancesHandler),
        (rf"/{API_PREFIX}/instances/(i-[0-9a-f]{{8,17}})", InstanceHandler),
        (rf"/{API_PREFIX}/instances/(i-[0-9a-f]{{8,17}})/log", InstanceLogHandler),
        (
            rf"/{API_PREFIX}/instances/(i-[0-9a-f]{{8,17}})/(start|stop|reconnect)",
            InstanceActionHandler,
        ),
        # The remote notebooks, HTTP and websockets, through the forwards.
        *[route[:2] for route in remote_handlers("/")],
    ]

    backend_class = Type(
        default_value="jupyter_ec2.aws.EC2Backend",
        klass="jupyter_ec2.aws.EC2Backend",
        help="The EC2 layer (configured in its own section, c.EC2Backend).",
    ).tag(config=True)
    provisioner_class = Type(
        default_value="jupyter_ec2.provision.Provisioner",
        klass="jupyter_ec2.provision.Provisioner",
        help="The SSH provisioning layer (configured in c.Provisioner).",
    ).tag(config=True)
    tunnel_class = Type(
        default_value="jupyter_ec2.tunnel.TunnelManager",
        klass="jupyter_ec2.tunnel.TunnelManager",
        help="The port-forward layer.",
    ).tag(config=True)
    manager_class = Type(
        default_value="jupyter_ec2.manager.LaunchManager",
        klass="jupyter_ec2.manager.LaunchManager",
        help="The lifecycle manager (configured in c.LaunchManager).",
    ).tag(config=True)

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

    on_failure = Enum(
        ["stop", "terminate", "keep"],
        default_value="stop",
        help="""What happens to an instance whose launch or provisioning failed. 'stop' (default):
        it is stopped, so it costs no compute, and shown as failed with its step, message and
        log, with Start (retry) and Terminate buttons. 'terminate': it is deleted. 'keep': it
        keeps running, for debugging over SSH (it still stops itself when idle).""",
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

    def load_profile_set(self, backend, provisioner) -> ProfileSet:
        """Validate the configured profiles, logging each one that is not served and why."""
        defaults = {
            "region": backend.region,
            "environment": provisioner.environment,
            "idle_stop_minutes": provisioner.idle_stop_minutes,
        }
        profile_set = load_profiles(self.profiles, self.default_profile, defaults)
        for problem in profile_set.problems:
            self.log.error("jupyter-ec2: %s Fix it in your Jupyter config.", problem)
        if not profile_set.profiles:
            self.log.error("jupyter-ec2: no valid launch profile; nothing can be launched.")
        return profile_set

    def initialize_settings(self) -> None:
        """Build the services once, validate the profiles and share both with the handlers."""
        from .store import StateStore

        self.store = StateStore(self.state_dir)
        self.backend = self.backend_class(parent=self, store=self.store)
        self.provisioner = self.provisioner_class(parent=self, store=self.store)
        self.tunnels = self.tunnel_class(parent=self, store=self.store)
        # One login user for provisioning and forwards (an ssh_config User still wins for both).
        self.tunnels.default_user = self.provisioner.login_user
        self.profile_set = self.load_profile_set(self.backend, self.provisioner)
        self.manager = self.manager_class(
            parent=self,
            backend=self.backend,
            provisioner=self.provisioner,
            tunnels=self.tunnels,
            store=self.store,
            profiles=self.profile_set,
            base_url=self.serverapp.base_url if self.serverapp else "/",
            open_mode=self.open_mode,
            on_failure=self.on_failure,
        )

        def remote_lookup(instance_id: str) -> RemoteEndpoint | None:
            # Looked up per request, so a restarted manager or a moved forward needs no re-route.
            found = self.manager.remote_endpoint(instance_id)
            if found is None:
                return None
            local_port, token, state = found
            return RemoteEndpoint(local_port=local_port, token=token, state=state)

        self.settings.update(
            {
                "jupyter_ec2_profiles": self.profile_set,
                "jupyter_ec2_manager": self.manager,
                "jupyter_ec2_remote_lookup": remote_lookup,
            }
        )
        self.log.info(
            "jupyter-ec2 %s: %d launch profile(s): %s",
            __version__,
            len(self.profile_set.profiles),
            ", ".join(self.profile_set.profiles) or "none",
        )

    def initialize_handlers(self) -> None:
        """Register the REST routes."""
        self.handlers.extend(self.routes)

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        """Once the event loop runs: re-discover instances and start the poller."""
        await self.manager.ensure_started()

    async def stop_extension(self) -> None:
        """Close every forward and cancel every task; instances keep running and stop when idle."""
        await self.manager.stop()
        close_upstream_pool(self.serverapp.web_app.settings)
