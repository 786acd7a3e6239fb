"""The jupyter-ec2 server extension: configuration, routes and the services behind them.

This module only wires: it validates the launch profiles once at start-up, builds the services
with ``parent=self`` so they read their own configuration sections, and registers the REST
handlers. The work happens in the layers it wires together.
"""

from __future__ import annotations

import os

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Dict, Enum, Float, Int, Type, Unicode, default, validate

from ._version import __version__
from .handlers import (
    CostsHandler,
    ImageHandler,
    ImagesHandler,
    InstanceActionHandler,
    InstanceHandler,
    InstanceImageHandler,
    InstanceLogHandler,
    InstancesHandler,
    KeepaliveHandler,
    PreflightHandler,
    ProfilesHandler,
    ResizeHandler,
    ResizeOptionsHandler,
    SnapshotsHandler,
    WorkersHandler,
)
from .models import IMAGE_ID_PATTERN, INSTANCE_ID_PATTERN, ProfileSet, load_profiles
from .origin import (
    InstanceOrigins,
    install_instance_origins,
    is_loopback,
    local_origin_handlers,
    resolve_mode,
    running_under_jupyterhub,
)
from .proxy import (
    LIMITS_SETTING,
    ProxyLimits,
    RemoteEndpoint,
    close_upstream_pool,
    remote_handlers,
)
from .workers import DASHBOARD_SUFFIX

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
        (rf"/{API_PREFIX}/costs", CostsHandler),
        (rf"/{API_PREFIX}/snapshots", SnapshotsHandler),
        (rf"/{API_PREFIX}/preflight", PreflightHandler),
        (rf"/{API_PREFIX}/instances", InstancesHandler),
        (rf"/{API_PREFIX}/instances/({INSTANCE_ID_PATTERN})", InstanceHandler),
        (rf"/{API_PREFIX}/instances/({INSTANCE_ID_PATTERN})/log", InstanceLogHandler),
        (rf"/{API_PREFIX}/instances/({INSTANCE_ID_PATTERN})/keepalive", KeepaliveHandler),
        (rf"/{API_PREFIX}/instances/({INSTANCE_ID_PATTERN})/resize", ResizeHandler),
        (
            rf"/{API_PREFIX}/instances/({INSTANCE_ID_PATTERN})/resize-options",
            ResizeOptionsHandler,
        ),
        (rf"/{API_PREFIX}/instances/({INSTANCE_ID_PATTERN})/workers", WorkersHandler),
        (
            rf"/{API_PREFIX}/instances/({INSTANCE_ID_PATTERN})/(start|stop|reconnect)",
            InstanceActionHandler,
        ),
        (rf"/{API_PREFIX}/instances/({INSTANCE_ID_PATTERN})/image", InstanceImageHandler),
        (rf"/{API_PREFIX}/images", ImagesHandler),
        (rf"/{API_PREFIX}/images/({IMAGE_ID_PATTERN})", ImageHandler),
        # The remote notebooks, HTTP and websockets, through the forwards.
        *[route[:2] for route in remote_handlers("/")],
        # The handoff from the local session to an instance's own origin.
        *[route[:2] for route in local_origin_handlers("/")],
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

    # -- the remote notebook's origin and the proxy's bounds (issue #18) ------------------------

    remote_origin = Enum(
        ["auto", "separate", "same"],
        default_value="auto",
        help="""Where a remote notebook is served in 'proxy' mode. 'separate': each instance on
        an origin of its own, http://<instance-id>.localhost:<port>/ on this server, reached
        through a one-time handoff from your local session; a page the instance serves can then
        neither read this server's cookies nor act with your session. 'same': at
        {base_url}jupyter-ec2/remote/{id}/ on this server's origin, where code the instance
        serves runs with your local session (use it only where no second origin reaches the
        server, e.g. a single-domain JupyterHub; see docs/security.md). 'auto' (default):
        'separate' when this server listens on a loopback address and is not a JupyterHub
        single-user server, else 'same'.""",
    ).tag(config=True)

    proxy_connect_timeout = Float(
        10.0,
        min=0.1,
        help="Seconds the proxy waits to open a connection through a forward (then 504).",
    ).tag(config=True)
    proxy_first_byte_timeout = Float(
        300.0,
        min=0.1,
        help="""Seconds the proxy waits for the remote server to start answering a request
        (then 504), and for its websocket handshake.""",
    ).tag(config=True)
    proxy_idle_timeout = Float(
        300.0,
        min=0.1,
        help="""Seconds a response body, or a browser that reads nothing of a websocket, may
        stall before the proxy ends the connection.""",
    ).tag(config=True)
    proxy_websocket_max_pending = Int(
        64 * 1024 * 1024,
        min=1024 * 1024,
        help="""Bytes of websocket messages the proxy holds for one side at a time. A larger
        message closes the websocket with code 1009 (one log line); smaller ones are relayed
        with back-pressure, so memory stays bounded whatever the remote sends.""",
    ).tag(config=True)

    instance_origins: InstanceOrigins

    def build_instance_origins(self) -> InstanceOrigins:
        """The resolved ``remote_origin`` mode, bound to this server's port and base_url."""
        serverapp = self.serverapp
        ip = getattr(serverapp, "ip", "localhost") if serverapp else "localhost"
        mode = resolve_mode(
            self.remote_origin,
            ip,
            jupyterhub=running_under_jupyterhub(),
            sock=getattr(serverapp, "sock", "") if serverapp else "",
        )
        tls = bool(serverapp and getattr(serverapp, "certfile", None))
        return InstanceOrigins(
            mode,
            port=lambda: int(getattr(self.serverapp, "port", 8888) or 8888),
            base_url=serverapp.base_url if serverapp else "/",
            scheme="https" if tls else "http",
            local_host=ip if is_loopback(ip) else "localhost",
        )

    # -- end of issue #18's traits --------------------------------------------------------------

    on_failure = Enum(
        ["stop", "terminate", "keep"],
        default_value="stop",
        help="""What happens to an instance whose launch or provisioning failed. 'stop' (default):
        it is stopped, so it costs no compute, and shown as failed with its step, message and
        log, with Start (retry) and Terminate buttons. 'terminate': it is deleted. 'keep': it
        keeps running, for debugging over SSH (it still stops itself when idle).""",
    ).tag(config=True)

    monthly_budget_usd = Float(
        None,
        allow_none=True,
        min=0.0,
        help="""A monthly budget in USD for the instances jupyter-ec2 manages. Once the estimated
        spend of this calendar month (UTC; compute while running plus root disks, also while
        stopped) reaches it, launches are refused (409) saying by how much it is over; at 80% a
        warning is shown. None: no budget.""",
    ).tag(config=True)

    max_hourly_usd = Float(
        None,
        allow_none=True,
        min=0.0,
        help="""The highest price per hour in USD of an instance type a launch (or a resize) may
        choose; one above it, or one whose price AWS does not state, is refused (409).
        None: no limit.""",
    ).tag(config=True)

    terminate_stopped_after_days = Float(
        0,
        min=0.0,
        help="""Forgotten stopped instances: one stopped this many days (fractions allowed) has
        every disk snapshotted (the snapshots tagged as managed, listed by GET snapshots with
        their $/month), then is terminated once the snapshots are completed; a failed snapshot
        leaves it running nothing and NOT terminated, and says why. JupyterLab warns a day
        before. 0: never.""",
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
        # One login user for provisioning and forwards (an ssh_config User still wins for both),
        # unless c.TunnelManager.default_user is set: then that is what the forwards use.
        if "default_user" not in self.config.get("TunnelManager", {}):
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
            monthly_budget_usd=self.monthly_budget_usd,
            max_hourly_usd=self.max_hourly_usd,
            terminate_stopped_after_days=self.terminate_stopped_after_days,
        )

        def remote_lookup(instance_id: str) -> RemoteEndpoint | None:
            # Looked up per request, so a restarted manager or a moved forward needs no re-route.
            if instance_id.endswith(DASHBOARD_SUFFIX):  # the Dask dashboard (docs/dask.md)
                found = self.manager.workers.dashboard_endpoint(
                    instance_id[: -len(DASHBOARD_SUFFIX)]
                )
            else:
                found = self.manager.remote_endpoint(instance_id)
            if found is None:
                return None
            local_port, token, state = found
            return RemoteEndpoint(local_port=local_port, token=token, state=state)

        self.instance_origins = self.build_instance_origins()
        self.settings.update(
            {
                LIMITS_SETTING: ProxyLimits(
                    connect_timeout=self.proxy_connect_timeout,
                    first_byte_timeout=self.proxy_first_byte_timeout,
                    idle_timeout=self.proxy_idle_timeout,
                    ws_max_pending=self.proxy_websocket_max_pending,
                ),
                "jupyter_ec2_profiles": self.profile_set,
                "jupyter_ec2_manager": self.manager,
                "jupyter_ec2_remote_lookup": remote_lookup,
            }
        )
        self.log.info(
            "jupyter-ec2: remote notebooks are served %s.",
            "each on its own origin (http://<instance-id>.localhost:<port>/)"
            if self.instance_origins.mode == "separate"
            else "on this server's origin (remote_origin = 'same', see docs/security.md)",
        )
        self.log.info(
            "jupyter-ec2 %s: %d launch profile(s): %s",
            __version__,
            len(self.profile_set.profiles),
            ", ".join(self.profile_set.profiles) or "none",
        )

    def initialize_handlers(self) -> None:
        """Register the REST routes, and the instance origins ahead of every local route."""
        self.handlers.extend(self.routes)
        if self.serverapp is not None:
            install_instance_origins(self.serverapp.web_app, self.instance_origins)

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        """Once the event loop runs: re-discover instances and start the poller."""
        await self.manager.ensure_started()

    async def stop_extension(self) -> None:
        """Close every forward and cancel every task; instances keep running and stop when idle."""
        await self.manager.stop()
        close_upstream_pool(self.serverapp.web_app.settings)
