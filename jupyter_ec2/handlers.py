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

from .errors import EC2LauncherError

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
                self.log.warning("jupyter-ec2: %s %s failed: %s", self.request.method,
                                 self.request.path, err.message)
            self.set_status(err.status)
            self.finish(json.dumps(err.to_json()))
            return None

    return wrapper


class EC2APIHandler(ExtensionHandlerMixin, APIHandler):
    """Base of the jupyter-ec2 REST handlers: JSON answers, authentication required."""

    auth_resource = AUTH_RESOURCE

    def write_json(self, body: Any, status: int = 200) -> None:
        """Finish the request with a JSON body."""
        self.set_status(status)
        self.finish(json.dumps(body))


class ProfilesHandler(EC2APIHandler):
    """``GET profiles``: the launch profiles this server offers."""

    @web.authenticated
    @authorized
    @api_errors
    async def get(self) -> None:
        """The validated profiles and the default one."""
        self.write_json(self.settings["jupyter_ec2_profiles"].to_json())
