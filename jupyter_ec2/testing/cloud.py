"""The simulated cloud: moto's EC2 (and every other moto service) served on 127.0.0.1.

moto runs in server mode inside this process, so clients talk to it over real HTTP on loopback
(exactly as the extension talks to AWS) while the harness can still reach moto's EC2 backend
in-process, e.g. to hold an instance in ``pending`` while it "boots".

Clients reach moto through a :class:`~.strict.StrictFront` (:attr:`SimulatedCloud.endpoint_url`):
requests are checked against the limits AWS documents and new instances can lag behind in
describes, as on EC2. The harness's own view (:meth:`SimulatedCloud.client`, used by the instance
hosts and by tests to look at the cloud) goes to moto directly and sees the truth.

moto reads its switches when its modules are imported (``moto.settings`` reads the validation
flags, ``moto.ec2.models.amis`` reads ``MOTO_AMIS_PATH``); :meth:`SimulatedCloud.start` sets the
environment first and also patches those module globals in case moto was imported earlier.
There is one moto state per process: run one :class:`SimulatedCloud` at a time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

from . import account, saved_images
from .iam import ACCOUNT_ID, SPOT_ROLE_NAME, SPOT_SERVICE, PolicyAuthorizer, action_level_view
from .images import ubuntu_images, write_amis_file
from .strict import StrictFront

DUMMY_ACCESS_KEY_ID = "testing"
"""The access key id every harness client uses; moto accepts any."""

DUMMY_SECRET_ACCESS_KEY = "testing"  # noqa: S105 - a dummy for the simulated cloud
"""The secret key every harness client uses; moto accepts any."""

HARNESS_ACCESS_KEY_ID = "harness"
"""The access key id of the harness's own clients (:meth:`SimulatedCloud.client`): moto's IAM
enforcement never applies to it, so the instance hosts keep seeing the cloud while a test runs
the extension as a restricted IAM user."""

NO_PROXY = "127.0.0.1,localhost,::1"
"""Hosts a client may reach without the (closed) proxy."""

_MOTO_SWITCHES = {
    # environment variable: attribute of moto.settings
    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "EC2_ENABLE_INSTANCE_TYPE_VALIDATION",
    "MOTO_ENABLE_AMI_VALIDATION": "ENABLE_AMI_VALIDATION",
    "MOTO_ENABLE_KEYPAIR_VALIDATION": "ENABLE_KEYPAIR_VALIDATION",
}


class ClosedPort:
    """A loopback TCP port that refuses every connection and that nobody else can take.

    The port is bound but never listened on: the kernel answers connection attempts with a reset
    (ECONNREFUSED) at once, and no other process can bind it while this object lives.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, for use as a proxy that fails every request."""
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Release the port."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SimulatedCloud:
    """moto in server mode on 127.0.0.1, with AWS validation on and current Ubuntu images."""

    _lock = threading.Lock()
    _running: SimulatedCloud | None = None

    def __init__(
        self,
        region: str = "us-east-1",
        port: int = 0,
        validation: bool = True,
        quiet: bool = True,
    ):
        self._region = region
        self._quiet = quiet
        self._requested_port = port
        self._validation = validation
        self._server: Any = None
        self._port: int | None = None
        self._front: StrictFront | None = None
        self._iam: PolicyAuthorizer | None = None
        self._saved_authenticator: Any = None
        self._tmpdir: Path | None = None
        self._proxy: ClosedPort | None = None
        self._saved_environ: dict[str, str | None] = {}
        self._saved_settings: dict[str, Any] = {}
        self._saved_amis: Any = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SimulatedCloud:
        """Start the moto server (returns once it accepts requests)."""
        with SimulatedCloud._lock:
            if SimulatedCloud._running is not None:
                raise RuntimeError(
                    "A SimulatedCloud is already running in this process (moto has one state "
                    "per process); stop it first or share it."
                )
            SimulatedCloud._running = self
        try:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="jupyter-ec2-cloud-"))
            amis_path = write_amis_file(self._tmpdir / "amis.json")
            self._configure_moto(amis_path)
            account.install()  # EC2 quotas, default VPC's internet gateway (see .account)
            saved_images.install()  # CreateImage as AWS does it (see .saved_images)
            self._proxy = ClosedPort()

            from moto.server import ThreadedMotoServer

            if self._quiet and logging.getLogger("werkzeug").level == logging.NOTSET:
                # werkzeug logs every request at INFO to stderr unless told otherwise.
                logging.getLogger("werkzeug").setLevel(logging.WARNING)

            self._server = ThreadedMotoServer(
                ip_address="127.0.0.1", port=self._requested_port, verbose=False
            )
            self._server.start()
            self._port = self._server.get_host_and_port()[1]
            self._front = StrictFront(self._port).start()
            self._front.backend_of = self.ec2_backend  # the image rules read moto's state
            self._exempt_harness_from_iam()
            # Build the region's EC2 backend now (AMIs, default VPC), not in the first test.
            self.ec2_backend()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server and restore the environment and moto globals it changed."""
        if self._front is not None:
            self._front.stop()
            self._front = None
        if self._server is not None:
            try:
                self._server.stop()
            finally:
                self._server = None
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
        self.enforce_iam(False)
        self._restore_moto()
        account.uninstall()
        saved_images.uninstall()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        if self._saved_authenticator is not None:
            from moto.core.authorization import ActionAuthenticatorMixin

            ActionAuthenticatorMixin._authenticate_and_authorize_action = self._saved_authenticator  # type: ignore[method-assign]
            self._saved_authenticator = None
            self._tmpdir = None
        self._port = None
        with SimulatedCloud._lock:
            if SimulatedCloud._running is self:
                SimulatedCloud._running = None

    def __enter__(self) -> SimulatedCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need -------------------------------------------------------------------

    @property
    def region(self) -> str:
        """The default region of clients (moto serves every region)."""
        return self._region

    @property
    def port(self) -> int:
        """The TCP port of the strict front, which clients talk to."""
        return self.front.port

    @property
    def moto_port(self) -> int:
        """The TCP port moto itself listens on (behind the front)."""
        if self._port is None:
            raise RuntimeError("The simulated cloud is not running; call start() first.")
        return self._port

    @property
    def front(self) -> StrictFront:
        """The strict, late front every client goes through."""
        if self._front is None:
            raise RuntimeError("The simulated cloud is not running; call start() first.")
        return self._front

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the strict front: the endpoint of every AWS service."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def moto_endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>`` of moto itself: no checks, no lag (the harness's view)."""
        return f"http://127.0.0.1:{self.moto_port}"

    def set_lag(self, seconds: float) -> None:
        """Hide new or just-started instances from DescribeInstances for ``seconds`` (0: off).

        While hidden, a describe by id answers ``InvalidInstanceID.NotFound`` and a describe
        by filters leaves the instance out, as EC2 may shortly after RunInstances or a start.
        A new image is likewise missing from DescribeImages for ``seconds`` after CreateImage,
        then reads ``pending`` for as long again.
        The ``jp_ec2_cloud`` fixture sets it back to 0 before each test.
        """
        self.front.set_lag(seconds)

    @property
    def closed_proxy_url(self) -> str:
        """A proxy URL on a closed loopback port: any request sent through it fails at once."""
        if self._proxy is None:
            raise RuntimeError("The simulated cloud is not running; call start() first.")
        return self._proxy.url

    def env(self) -> dict[str, str]:
        """Environment variables that point a client process at this cloud, and only there."""
        proxy = self.closed_proxy_url
        return {
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            # No instance metadata lookups (169.254.169.254 is not loopback).
            "AWS_EC2_METADATA_DISABLED": "true",
            # Every boto3 client, even one built without endpoint_url, lands here.
            "AWS_ENDPOINT_URL": self.endpoint_url,
            # No profile or credentials from the user's ~/.aws can take part.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            # Any HTTP call that is not for loopback goes to a closed port and fails locally.
            "HTTP_PROXY": proxy,
            "HTTPS_PROXY": proxy,
            "http_proxy": proxy,
            "https_proxy": proxy,
            "NO_PROXY": NO_PROXY,
            "no_proxy": NO_PROXY,
        }

    # -- IAM ------------------------------------------------------------------------------------

    def iam_user(self, policy: dict) -> dict[str, str]:
        """A fresh IAM user holding exactly ``policy``; IAM is enforced from now on.

        Returns the environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``)
        of the user's access key. moto authenticates its requests and checks each action; the
        strict front evaluates the policy's resources and conditions for EC2 (see
        :mod:`.iam`). Enforcement lasts until :meth:`enforce_iam` (False) or :meth:`reset`
        (the ``jp_ec2_cloud`` fixture does both after each test). The harness's own clients
        (:meth:`client`) are never refused.
        """
        import uuid

        iam = self.client("iam")
        name = f"jupyter-ec2-test-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=name)
        iam.put_user_policy(
            UserName=name,
            PolicyName="jupyter-ec2",
            PolicyDocument=json.dumps(action_level_view(policy)),
        )
        key = iam.create_access_key(UserName=name)["AccessKey"]
        self.enforce_iam(True)
        assert self._iam is not None
        self._iam.add(key["AccessKeyId"], policy)
        return {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }

    def enforce_iam(self, on: bool) -> None:
        """Switch IAM enforcement on (every client but the harness's) or off (moto's default)."""
        import moto.settings as moto_settings
        from moto.core.authorization import ActionAuthenticatorMixin

        if on:
            if self._iam is None:
                self._iam = PolicyAuthorizer(
                    self._resource_tags, self._spot_role_exists, self._create_spot_role
                )
            self.front.authorizer = self._iam
            moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        else:
            self._iam = None
            if self._front is not None:
                self._front.authorizer = lambda key, region, action, params: None
            moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        ActionAuthenticatorMixin.request_count = 0

    @property
    def iam_denials(self) -> list:
        """Every permission the front refused while IAM was enforced (for test messages)."""
        return list(self._iam.denied) if self._iam is not None else []

    def _resource_tags(self, region: str, resource_id: str) -> dict[str, str]:
        return dict(self.ec2_backend(region).tags.get(resource_id, {}))

    def _iam_backend(self) -> Any:
        from moto.iam.models import iam_backends

        return iam_backends[ACCOUNT_ID]["aws"]

    def _spot_role_exists(self) -> bool:
        return any(role.name == SPOT_ROLE_NAME for role in self._iam_backend().roles.values())

    def _create_spot_role(self) -> None:
        # What EC2 does on the first spot request of an account, with the caller's permission.
        self._iam_backend().create_service_linked_role(
            service_name=SPOT_SERVICE, description="spot", suffix=""
        )

    def _exempt_harness_from_iam(self) -> None:
        """Let the harness's own key through moto's IAM checks (the instance hosts use it)."""
        from moto.core.authorization import ActionAuthenticatorMixin

        original = ActionAuthenticatorMixin._authenticate_and_authorize_action
        self._saved_authenticator = original
        marker = f"Credential={HARNESS_ACCESS_KEY_ID}/"

        def authenticate(mixin: Any, iam_request_cls: type, resource: str = "*") -> None:
            if marker in (mixin.headers.get("Authorization") or ""):
                return
            original(mixin, iam_request_cls, resource)

        ActionAuthenticatorMixin._authenticate_and_authorize_action = authenticate  # type: ignore[method-assign]

    def client(
        self,
        service: str = "ec2",
        region: str | None = None,
        *,
        strict: bool = False,
        **kwargs: Any,
    ) -> Any:
        """A boto3 client for ``service`` on this cloud, with the harness's credentials.

        By default it talks to moto directly (the truth: no checks, no lag, never refused by
        IAM enforcement); ``strict=True`` sends it through the strict front like the extension.
        """
        import boto3
        from botocore.config import Config

        kwargs.setdefault(
            "config",
            Config(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                proxies={},
            ),
        )
        key = DUMMY_ACCESS_KEY_ID if strict else HARNESS_ACCESS_KEY_ID
        session = boto3.session.Session(
            aws_access_key_id=key,
            aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            region_name=region or self.region,
        )
        url = self.endpoint_url if strict else self.moto_endpoint_url
        return session.client(service, endpoint_url=url, **kwargs)

    # -- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every resource (instances, key pairs, groups…); no lag; the image list stays."""
        self.enforce_iam(False)
        self.front.reset()
        url = f"{self.moto_endpoint_url}/moto-api/reset"  # always http://127.0.0.1:<port>
        request = urllib.request.Request(url, method="POST")  # noqa: S310
        # An explicit empty ProxyHandler: the closed proxy in the environment must not apply.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            response.read()
        account.reset_overrides()
        # Rebuild the default region's backend now, so the next request is fast.
        self.ec2_backend()

    def ec2_backend(self, region: str | None = None) -> Any:
        """moto's in-process EC2 backend of ``region`` (default account), for direct changes."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends

        return ec2_backends[DEFAULT_ACCOUNT_ID][region or self.region]

    @staticmethod
    def set_service_quota(code: str, value: float, region: str | None = None) -> None:
        """Set an EC2 vCPU quota (``L-DB2E81BA``…) of the simulated account until the next reset."""
        account.set_ec2_quota(code, value, region)

    @staticmethod
    def images() -> list[dict]:
        """The image definitions loaded into the cloud (see :mod:`.images`)."""
        return ubuntu_images()

    # -- moto configuration ------------------------------------------------------------------

    def _configure_moto(self, amis_path: Path) -> None:
        """Switch validation on and load our images, before and after moto's imports."""
        wanted = {"MOTO_AMIS_PATH": str(amis_path)}
        if self._validation:
            wanted.update({name: "true" for name in _MOTO_SWITCHES})
        for name, value in wanted.items():
            self._saved_environ[name] = os.environ.get(name)
            os.environ[name] = value

        # Imported only now, so that a first import already sees the environment above.
        import moto.ec2.models.amis as amis_module
        import moto.settings as moto_settings

        # moto may have been imported before (e.g. by another test module): patch its globals.
        for attribute in _MOTO_SWITCHES.values():
            self._saved_settings[attribute] = getattr(moto_settings, attribute)
            setattr(moto_settings, attribute, self._validation)
        self._saved_amis = amis_module.AMIS
        amis_module.AMIS = json.loads(amis_path.read_text())

    def _restore_moto(self) -> None:
        """Undo :meth:`_configure_moto`, so later code in this process sees moto's defaults."""
        for name, value in self._saved_environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environ = {}
        if self._saved_settings:
            import moto.settings as moto_settings

            for attribute, value in self._saved_settings.items():
                setattr(moto_settings, attribute, value)
            self._saved_settings = {}
        if self._saved_amis is not None:
            import moto.ec2.models.amis as amis_module

            amis_module.AMIS = self._saved_amis
            self._saved_amis = None
