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


#: The IAM actions an AWS operation needs besides its own: tags put on what it creates
#: (``ec2:CreateTags`` with ``ec2:CreateAction``), and the first spot launch of an account
#: creating EC2's spot service-linked role.
ALSO_NEEDED = {
    "RunInstances": ("ec2:CreateTags", "iam:CreateServiceLinkedRole"),
    "CreateSecurityGroup": ("ec2:CreateTags",),
    "ImportKeyPair": ("ec2:CreateTags",),
    "CreateImage": ("ec2:CreateTags",),
}

#: AWS error codes that mean "these credentials may not do this".
PERMISSION_CODES = frozenset(
    {
        "UnauthorizedOperation",
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedAccess",
        "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
    }
)


class PermissionDeniedError(CloudError):
    """AWS refused an action to these credentials; ``actions`` are the IAM actions it needs."""

    def __init__(self, message: str, *, code: str, actions: tuple[str, ...]):
        super().__init__(message, code=code)
        self.actions = actions


def permission_denied(
    operation: str, service: str, aws_message: str, *, action: str, code: str
) -> PermissionDeniedError:
    """The error for a refused call, naming the IAM action the call needed in plain words.

    EC2 usually answers only with an encoded authorization message, so the action is taken
    from the call that failed (``RunInstances`` → ``ec2:RunInstances``); an action AWS does
    name in its message ("not authorized to perform: ec2:CreateTags") comes first.
    """
    import re

    needed = f"{service}:{operation}" if operation else ""
    named = re.search(r"not authorized to perform:? ([a-z0-9-]+:[A-Za-z0-9]+)", aws_message)
    first = named.group(1) if named else needed
    if code == "AuthFailure.ServiceLinkedRoleCreationNotPermitted":
        # EC2's own word for a first spot launch that may not create its service-linked role.
        first = "iam:CreateServiceLinkedRole"
    others = tuple(a for a in (needed, *ALSO_NEEDED.get(operation, ())) if a and a != first)
    actions = (first, *others) if first else others
    text = (
        f"AWS refused to {action} ({code}): the IAM policy of these AWS credentials does not "
        f"allow {first or 'this call'}"
    )
    also = [a for a in others if a != needed] if first == needed else list(others)
    if also:
        text += f" (this call may also need {', '.join(also)})"
    text += (
        ". Add the missing permission to the IAM user or role; docs/iam-policy.json lists "
        "every permission jupyter-ec2 needs."
    )
    return PermissionDeniedError(text, code=code, actions=actions)
