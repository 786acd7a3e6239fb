"""Domain errors of jupyter-ec2, each carrying the HTTP status the REST layer answers with.

Every layer raises these instead of library exceptions, so that ``handlers.py`` maps errors to
responses in one place and a user never sees a traceback, an ARN or a file path.
"""

from __future__ import annotations


class EC2LauncherError(Exception):
    """Base of every error a user may see; ``status`` is the HTTP status it maps to."""

    status = 500

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code

    def to_json(self) -> dict:
        """The JSON body a REST client receives."""
        body: dict = {"message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.code is not None:
            body["code"] = self.code
        return body


class ValidationError(EC2LauncherError, ValueError):
    """A bad input from a browser or a config file; ``field`` names it."""

    status = 400

    def __init__(self, field: str, message: str):
        super().__init__(message, field=field)

    def prefixed(self, prefix: str) -> ValidationError:
        """The same error with its field nested under ``prefix`` (``overrides.volume_gb``)."""
        return ValidationError(f"{prefix}.{self.field}" if self.field else prefix, self.message)


class NotFoundError(EC2LauncherError):
    """An unknown instance or profile."""

    status = 404


class ConflictError(EC2LauncherError):
    """An action the instance's current phase does not allow."""

    status = 409


class CloudError(EC2LauncherError):
    """A failure of AWS or of the EC2-compatible endpoint; ``code`` is AWS's error code."""

    status = 502


class SSHError(EC2LauncherError):
    """A failure to reach or use an instance over SSH."""

    status = 502


class HostKeyMismatchError(SSHError):
    """The host answered with a key other than the one pinned at launch."""
