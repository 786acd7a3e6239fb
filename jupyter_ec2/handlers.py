"""Thin REST handlers of ``{base_url}jupyter-ec2/api/``.

A handler parses and validates its input into a model, calls one service method and serialises
the answer. Domain errors are turned into responses in one place, :func:`api_errors`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from .errors import EC2LauncherError, ValidationError
from .models import MAX_REQUEST_BYTES, ImageRequest, LaunchRequest, validate_keepalive
from .resize import validate_resize

#: The resource name jupyter_server authorizers see for every jupyter-ec2 route.
AUTH_RESOURCE = "jupyter_ec2"


def api_errors(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Answer a domain error with its status and ``{"message", "field"}``, never a traceback."""

    @functools.wraps(method)
    async def wrapper(self: APIHandler, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except EC2LauncherError as err:
            if err.status >= 500:
                self.log.warning(
                    "jupyter-ec2: %s %s failed: %s",
                    self.request.method,
                    self.request.path,
                    err.message,
                )
            self.set_status(err.status)
            self.finish(json.dumps(err.to_json()))
            return None

    return wrapper


class EC2APIHandler(ExtensionHandlerMixin, APIHandler):
    """Base of the jupyter-ec2 REST handlers: JSON answers, authentication required."""

    auth_resource = AUTH_RESOURCE

    async def manager(self) -> Any:
        """The lifecycle manager, started on first use (pytest-jupyter skips the start hook)."""
        manager = self.settings["jupyter_ec2_manager"]
        await manager.ensure_started()
        return manager

    def write_json(self, body: Any, status: int = 200) -> None:
        """Finish the request with a JSON body."""
        self.set_status(status)
        self.finish(json.dumps(body))

    def json_body(self) -> Any:
        """The decoded JSON body, refused with a 400 naming ``body`` when too large or malformed."""
        raw = self.request.body
        if len(raw) > MAX_REQUEST_BYTES:
            raise ValidationError(
                "body", f"The request body is larger than {MAX_REQUEST_BYTES} bytes."
            )
        try:
            return json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ValidationError("body", "The request body is not valid JSON.") from None


class ProfilesHandler(EC2APIHandler):
    """``GET profiles``: the launch profiles this server offers."""

    @web.authenticated
    @authorized
    @api_errors
    async def get(self) -> None:
        """The validated profiles and the default one."""
        self.write_json(self.settings["jupyter_ec2_profiles"].to_json())


class CostsHandler(EC2APIHandler):
    """``GET costs``: what the managed instances cost so far (an estimate)."""

    @web.authenticated
    @authorized
    @api_errors
    async def get(self) -> None:
        """This month's spend, the current $/h, the stopped disks' $/month, per instance too."""
        manager = await self.manager()
        self.write_json(manager.cost_keeper.summary())


class SnapshotsHandler(EC2APIHandler):
    """``GET snapshots``: the snapshots jupyter-ec2 made of forgotten stopped instances."""

    @web.authenticated
    @authorized
    @api_errors
    async def get(self) -> None:
        """Each managed snapshot with its state, size, source instance and $/month."""
        manager = await self.manager()
        self.write_json({"snapshots": await manager.forgotten.list_snapshots()})


class InstancesHandler(EC2APIHandler):
    """``GET instances`` lists every managed instance; ``POST instances`` launches one."""

    @web.authenticated
    @authorized
    @api_errors
    async def get(self) -> None:
        """Every instance this extension manages, found by tags."""
        manager = await self.manager()
        self.write_json({"instances": manager.list()})

    @web.authenticated
    @authorized
    @api_errors
    async def post(self) -> None:
        """Launch the profile named in the body; answers 202 while it comes up."""
        request = LaunchRequest.from_json(self.json_body())
        manager = await self.manager()
        self.write_json(await manager.launch(request), status=202)


class InstanceHandler(EC2APIHandler):
    """``GET instances/{id}`` shows one instance; ``DELETE`` terminates it."""

    @web.authenticated
    @authorized
    @api_errors
    async def get(self, instance_id: str) -> None:
        """One instance."""
        manager = await self.manager()
        self.write_json(manager.to_json(manager.get(instance_id)))

    @web.authenticated
    @authorized
    @api_errors
    async def delete(self, instance_id: str) -> None:
        """Terminate the instance; its disk is lost."""
        manager = await self.manager()
        self.write_json(await manager.terminate(instance_id), status=202)


class InstanceLogHandler(EC2APIHandler):
    """``GET instances/{id}/log?after=N``: the instance's log after line N."""

    @web.authenticated
    @authorized
    @api_errors
    async def get(self, instance_id: str) -> None:
        """Log lines with ``seq > after``, and the ``next`` value to ask for."""
        raw = self.get_query_argument("after", "0")
        # isdigit() alone accepts "²" and other digits int() refuses: ASCII digits only.
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
            raise ValidationError("after", "after must be a non-negative whole number.")
        manager = await self.manager()
        self.write_json(manager.log_after(instance_id, int(raw)))


class KeepaliveHandler(EC2APIHandler):
    """``POST instances/{id}/keepalive`` ``{"minutes": n}``: postpone the idle auto-stop."""

    @web.authenticated
    @authorized
    @api_errors
    async def post(self, instance_id: str) -> None:
        """Postpone the stop by n minutes from now (1–1440); answers 200 with the Instance."""
        minutes = validate_keepalive(self.json_body())
        manager = await self.manager()
        self.write_json(await manager.keepalive(instance_id, minutes))


class ResizeOptionsHandler(EC2APIHandler):
    """``GET instances/{id}/resize-options``: the types the instance may become, and why not."""

    @web.authenticated
    @authorized
    @api_errors
    async def get(self, instance_id: str) -> None:
        """The compatible types with their $/h, and the excluded ones with the reason."""
        manager = await self.manager()
        self.write_json(await manager.resize_options(instance_id))


class ResizeHandler(EC2APIHandler):
    """``POST instances/{id}/resize`` ``{"instance_type": t}``: change the type, same disk."""

    @web.authenticated
    @authorized
    @api_errors
    async def post(self, instance_id: str) -> None:
        """Check, then stop, change the type, start and re-attach; answers 202."""
        instance_type = validate_resize(self.json_body())
        manager = await self.manager()
        self.write_json(await manager.resize(instance_id, instance_type), status=202)


class InstanceActionHandler(EC2APIHandler):
    """``POST instances/{id}/start|stop|reconnect``."""

    @web.authenticated
    @authorized
    @api_errors
    async def post(self, instance_id: str, action: str) -> None:
        """Run the action; answers 202 while it proceeds."""
        manager = await self.manager()
        method = {
            "start": manager.start_instance,
            "stop": manager.stop_instance,
            "reconnect": manager.reconnect,
        }[action]
        self.write_json(await method(instance_id), status=202)


class InstanceImageHandler(EC2APIHandler):
    """``POST instances/{id}/image`` ``{"name"?, "reboot"?}``: save the instance as an image."""

    @web.authenticated
    @authorized
    @api_errors
    async def post(self, instance_id: str) -> None:
        """Answers 202 with the ``pending`` Image; EC2 makes it in the background."""
        request = ImageRequest.from_json(self.json_body())
        manager = await self.manager()
        self.write_json(await manager.images.create(instance_id, request), status=202)


class ImagesHandler(EC2APIHandler):
    """``GET images``: every image saved from a managed instance, with state, size and cost."""

    @web.authenticated
    @authorized
    @api_errors
    async def get(self) -> None:
        """The managed images, found by their tags, newest first."""
        manager = await self.manager()
        self.write_json({"images": await manager.images.list()})


class ImageHandler(EC2APIHandler):
    """``DELETE images/{ami}``: deregister a managed image and delete its snapshots."""

    @web.authenticated
    @authorized
    @api_errors
    async def delete(self, image_id: str) -> None:
        """Answers 202 with the deleted Image."""
        manager = await self.manager()
        self.write_json(await manager.images.delete(image_id), status=202)


class WorkersHandler(EC2APIHandler):
    """``POST instances/{id}/workers`` adds Dask workers; ``DELETE`` removes them (docs/dask.md)."""

    @web.authenticated
    @authorized
    @api_errors
    async def post(self, instance_id: str) -> None:
        """Add Dask workers (1–20) next to a ready instance; answers 202 while they come up."""
        body = self.json_body()
        manager = await self.manager()
        self.write_json(await manager.workers.add(instance_id, body), status=202)

    @web.authenticated
    @authorized
    @api_errors
    async def delete(self, instance_id: str) -> None:
        """Terminate every Dask worker of the instance; answers 202."""
        manager = await self.manager()
        self.write_json(await manager.workers.remove(instance_id), status=202)


class PreflightHandler(EC2APIHandler):
    """``GET preflight?refresh=1``: the setup checks (credentials … ssh_client), in order."""

    @web.authenticated
    @authorized
    @api_errors
    async def get(self) -> None:
        """The checks, from the brief cache unless ``refresh`` is true."""
        raw = self.get_query_argument("refresh", "0").lower()
        if raw not in ("0", "1", "true", "false"):
            raise ValidationError("refresh", "refresh must be 0, 1, true or false.")
        manager = await self.manager()
        self.write_json(await manager.preflight_checks.report_json(refresh=raw in ("1", "true")))
