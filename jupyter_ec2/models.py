"""Pure data of jupyter-ec2: phases, launch profiles and their validation.

Nothing here does I/O. Every value that comes from a config file or a browser is validated by
the functions in this module, which raise :class:`~jupyter_ec2.errors.ValidationError` naming
the bad field, so that the caller can refuse it before anything is launched.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ValidationError


class Phase(str, enum.Enum):
    """Where an instance is in its lifecycle (DESIGN.md §2); the ``phase`` field of the API."""

    LAUNCHING = "launching"
    BOOTING = "booting"
    CONNECTING = "connecting"
    PROVISIONING = "provisioning"
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPING = "stopping"
    STOPPED = "stopped"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"
    RESIZING = "resizing"


#: The fields a launch profile may hold; a launch request may override only these.
PROFILE_FIELDS = (
    "display_name",
    "region",
    "instance_type",
    "ami",
    "volume_gb",
    "spot",
    "environment",
    "idle_stop_minutes",
    "tags",
    "workers",
)

#: Image aliases the EC2 layer resolves to the newest Canonical image.
AMI_ALIASES = ("ubuntu-24.04", "ubuntu-22.04", "debian-12")

MIN_VOLUME_GB = 8
MAX_VOLUME_GB = 16384  # gp3's limit
MAX_IDLE_STOP_MINUTES = 7 * 24 * 60
MAX_PACKAGES = 100
MAX_PACKAGE_SPEC = 200
MAX_TAGS = 40  # AWS allows 50; the extension's own tags need the rest

# Every pattern is matched with fullmatch (a "$" would accept a trailing newline) and, except
# for tags (AWS allows any UTF-8 letter there), with re.ASCII so "\\d" is 0-9 only.
_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}", re.ASCII)
_REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}", re.ASCII)
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]{0,15}\.[a-z0-9-]{2,16}", re.ASCII)
_AMI_ID = re.compile(r"ami-(?:[0-9a-f]{8}|[0-9a-f]{17})", re.ASCII)
_TAG_CHARS = re.compile(r"[\w .:/=+\-@]*")
_PACKAGE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", re.ASCII)
_HTTPS_URL = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~%/+-]*", re.ASCII)
#: An EC2 instance id, for routes and validation alike: ``i-`` and 8 or 17 lower-case hex digits.
INSTANCE_ID_PATTERN = r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})"
_INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN, re.ASCII)
_ABS_PATH = re.compile(r"/[A-Za-z0-9._+/-]{1,255}", re.ASCII)


@functools.lru_cache(maxsize=1)
def known_ec2_regions() -> frozenset[str]:
    """Every EC2 region botocore knows, in all partitions (read from botocore's local data)."""
    import botocore.session

    session = botocore.session.get_session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition_name=partition))
    return frozenset(regions)


def _expect(value: Any, kind: type | tuple[type, ...], field_name: str, what: str) -> Any:
    # bool is an int in Python, but `volume_gb: true` is a mistake, not 1 GB.
    if isinstance(value, bool) and kind is not bool:
        raise ValidationError(field_name, f"{field_name} must be {what}, not true/false.")
    if not isinstance(value, kind):
        raise ValidationError(field_name, f"{field_name} must be {what}, not {value!r:.40}.")
    return value


def validate_instance_id(value: Any, field: str = "instance_id") -> str:
    """An EC2 instance id: ``i-`` followed by 8 or 17 lower-case hex digits."""
    if not isinstance(value, str) or not _INSTANCE_ID.fullmatch(value):
        raise ValidationError(
            field, f"{str(value)[:40]!r} is not an instance id (i- and 8 or 17 hex digits)."
        )
    return value


def validate_profile_name(name: Any) -> str:
    """A profile name: lower-case letters, digits, '-' and '_', at most 32 characters."""
    _expect(name, str, "profile", "a string")
    if not _PROFILE_NAME.fullmatch(name):
        raise ValidationError(
            "profile",
            f"Profile name {name!r:.40} is not valid: use 1–32 lower-case letters, digits, "
            "'-' or '_', starting with a letter or digit.",
        )
    return name


def validate_display_name(value: Any) -> str:
    """A human label: 1–80 printable characters."""
    _expect(value, str, "display_name", "a string")
    value = value.strip()
    if not value or len(value) > 80 or not value.isprintable():
        raise ValidationError("display_name", "display_name must be 1–80 printable characters.")
    return value


def validate_region(value: Any) -> str:
    """A real EC2 region name such as ``us-east-1``."""
    _expect(value, str, "region", "a string such as 'us-east-1'")
    if not _REGION.fullmatch(value):
        raise ValidationError(
            "region", f"region {value!r:.40} is not a region name such as 'us-east-1'."
        )
    if value not in known_ec2_regions():
        raise ValidationError(
            "region", f"region {value!r} is not an EC2 region; pick one such as 'us-east-1'."
        )
    partition = ec2_region_partitions().get(value, "aws")
    if partition not in SUPPORTED_PARTITIONS:
        raise ValidationError(
            "region",
            f"region {value!r} is in the {_PARTITION_NAMES.get(partition, partition)} partition, "
            "which jupyter-ec2 does not support (Canonical's image owner, endpoints and ARNs "
            "differ there); pick a region of the commercial AWS partition such as 'us-east-1'.",
        )
    return value


#: The AWS partitions jupyter-ec2 launches in (see docs/security.md, "AWS partitions").
SUPPORTED_PARTITIONS = ("aws",)
_PARTITION_NAMES = {"aws-cn": "AWS China", "aws-us-gov": "AWS GovCloud (US)"}


@functools.lru_cache(maxsize=1)
def ec2_region_partitions() -> dict[str, str]:
    """Every EC2 region botocore knows → its partition (``aws``, ``aws-cn``, ``aws-us-gov``…)."""
    import botocore.session

    session = botocore.session.get_session()
    return {
        region: partition
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("ec2", partition_name=partition)
    }


def validate_instance_type(value: Any) -> str:
    """An instance type name of the form ``family.size`` (``t3.medium``)."""
    _expect(value, str, "instance_type", "a string such as 't3.medium'")
    if not _INSTANCE_TYPE.fullmatch(value):
        raise ValidationError(
            "instance_type", f"instance_type {value!r:.40} is not a type name such as 't3.medium'."
        )
    return value


def validate_ami(value: Any) -> str:
    """An image alias (``ubuntu-24.04``) or an image id (``ami-0123456789abcdef0``)."""
    _expect(value, str, "ami", "a string")
    if value in AMI_ALIASES or _AMI_ID.fullmatch(value):
        return value
    raise ValidationError(
        "ami",
        f"ami {value!r:.40} is neither an image id (ami- and 8 or 17 hex digits) nor one of "
        f"{', '.join(AMI_ALIASES)}.",
    )


def validate_volume_gb(value: Any) -> int:
    """The root volume size in GiB, an integer from 8 to 16384."""
    _expect(value, int, "volume_gb", "a whole number of GB")
    if not MIN_VOLUME_GB <= value <= MAX_VOLUME_GB:
        raise ValidationError(
            "volume_gb",
            f"volume_gb must be from {MIN_VOLUME_GB} to {MAX_VOLUME_GB} GB, not {value}.",
        )
    return value


def validate_spot(value: Any) -> bool:
    """Whether to ask for a spot instance."""
    return _expect(value, bool, "spot", "true or false")


def validate_idle_stop_minutes(value: Any) -> float | int:
    """Idle minutes before the instance stops itself; 0 turns auto-stop off, fractions allowed."""
    _expect(value, (int, float), "idle_stop_minutes", "a number of minutes")
    if not math.isfinite(value) or not 0 <= value <= MAX_IDLE_STOP_MINUTES:
        raise ValidationError(
            "idle_stop_minutes",
            f"idle_stop_minutes must be from 0 (off) to {MAX_IDLE_STOP_MINUTES} (a week).",
        )
    return value


def validate_keepalive(body: Any) -> int:
    """The body of ``POST instances/{id}/keepalive``: ``{"minutes": n}``, n a whole 1–1440."""
    if not isinstance(body, dict):
        raise ValidationError("body", 'The body must be a JSON object like {"minutes": 60}.')
    unknown = sorted(set(body) - {"minutes"})
    if unknown:
        raise ValidationError(str(unknown[0])[:40], f"Unknown field {unknown[0]!r:.40}.")
    if "minutes" not in body:
        raise ValidationError("minutes", "minutes is required (1 to 1440).")
    value = _expect(body["minutes"], int, "minutes", "a whole number of minutes")
    if not 1 <= value <= MAX_KEEPALIVE_MINUTES:
        raise ValidationError(
            "minutes", f"minutes must be from 1 to {MAX_KEEPALIVE_MINUTES} (a day), not {value}."
        )
    return value


#: The longest keepalive one request may ask for (a day).
MAX_KEEPALIVE_MINUTES = 1440


def validate_tags(value: Any) -> dict[str, str]:
    """User tags for the instance: at most 40, no ``aws:`` or ``jupyter-ec2:`` keys."""
    _expect(value, dict, "tags", "a mapping of tag names to values")
    if len(value) > MAX_TAGS:
        raise ValidationError("tags", f"At most {MAX_TAGS} tags are allowed.")
    tags = {}
    for key, val in value.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise ValidationError("tags", "Tag names and values must be strings.")
        if not 1 <= len(key) <= 127 or len(val) > 255:  # EC2's limits (strict front: RULES)
            raise ValidationError("tags", f"Tag {key!r:.40} is too long (name ≤ 127, value ≤ 255).")
        if key.lower().startswith(("aws:", "jupyter-ec2:")) or key == "Name":
            raise ValidationError("tags", f"Tag name {key!r} is reserved.")
        if not _TAG_CHARS.fullmatch(key) or not _TAG_CHARS.fullmatch(val):
            raise ValidationError("tags", f"Tag {key!r:.40} has characters AWS does not allow.")
        tags[key] = val
    return tags


def validate_package_spec(spec: Any, field_name: str = "environment.packages") -> str:
    """One PEP 508 requirement (``numpy>=2``); no pip options, newlines or shell syntax."""
    from packaging.requirements import InvalidRequirement, Requirement

    _expect(spec, str, field_name, "a package requirement string")
    if not spec or len(spec) > MAX_PACKAGE_SPEC:
        raise ValidationError(
            field_name, f"A package spec must be 1–{MAX_PACKAGE_SPEC} characters."
        )
    if not spec.isprintable() or spec != spec.strip() or not _PACKAGE_NAME.match(spec):
        raise ValidationError(
            field_name, f"{spec!r:.60} is not a package requirement such as 'numpy>=2'."
        )
    try:
        req = Requirement(spec)
    except InvalidRequirement:
        raise ValidationError(
            field_name, f"{spec!r:.60} is not a package requirement such as 'numpy>=2'."
        ) from None
    if req.url is not None and not req.url.startswith("https://"):
        raise ValidationError(
            field_name, f"{spec!r:.60}: only https:// direct references are allowed."
        )
    return spec


def validate_environment(value: Any) -> dict[str, Any]:
    """How Python and Jupyter get onto the instance: ``pip``, ``conda`` or ``existing``."""
    _expect(value, dict, "environment", "a mapping with a 'kind'")
    kind = value.get("kind")
    allowed = {
        "pip": {"kind", "packages"},
        "conda": {"kind", "packages", "installer_url"},
        "existing": {"kind", "python"},
    }
    if kind not in allowed:
        raise ValidationError(
            "environment.kind", "environment.kind must be pip, conda or existing."
        )
    unknown = sorted(set(value) - allowed[kind])
    if unknown:
        raise ValidationError(
            f"environment.{unknown[0]}", f"environment of kind {kind} has no field {unknown[0]!r}."
        )
    env: dict[str, Any] = {"kind": kind}
    if kind in ("pip", "conda"):
        packages = value.get("packages", [])
        _expect(packages, list, "environment.packages", "a list of package requirements")
        if len(packages) > MAX_PACKAGES:
            raise ValidationError("environment.packages", f"At most {MAX_PACKAGES} packages.")
        env["packages"] = [validate_package_spec(p) for p in packages]
    if kind == "conda" and "installer_url" in value:
        url = _expect(value["installer_url"], str, "environment.installer_url", "an https URL")
        if not _HTTPS_URL.fullmatch(url) or len(url) > 500:
            raise ValidationError(
                "environment.installer_url", "environment.installer_url must be a plain https URL."
            )
        env["installer_url"] = url
    if kind == "existing":
        python = value.get("python")
        if not isinstance(python, str) or not _ABS_PATH.fullmatch(python) or "/../" in python:
            raise ValidationError(
                "environment.python",
                "environment.python must be the absolute path of an interpreter on the image.",
            )
        env["python"] = python
    return env


#: The most Dask workers one notebook instance may have (DESIGN.md §4: n is 1–20).
MAX_WORKERS = 20


def validate_workers(body: Any, *, field_prefix: str = "") -> dict[str, Any]:
    """The workers of a request or profile: ``{"count": n, "instance_type"?: t}``, n 1–20."""
    name = field_prefix or "body"
    if not isinstance(body, dict):
        raise ValidationError(name, 'Workers must be a JSON object like {"count": 2}.')
    unknown = sorted(set(body) - {"count", "instance_type"})
    if unknown:
        raise ValidationError(
            f"{field_prefix}{str(unknown[0])[:40]}", f"Unknown field {unknown[0]!r:.40}."
        )
    if "count" not in body:
        raise ValidationError(f"{field_prefix}count", f"count is required (1 to {MAX_WORKERS}).")
    count = _expect(body["count"], int, f"{field_prefix}count", "a whole number of workers")
    if not 1 <= count <= MAX_WORKERS:
        raise ValidationError(
            f"{field_prefix}count", f"count must be from 1 to {MAX_WORKERS}, not {count}."
        )
    clean: dict[str, Any] = {"count": count}
    if body.get("instance_type") is not None:
        try:
            clean["instance_type"] = validate_instance_type(body["instance_type"])
        except ValidationError as err:
            raise ValidationError(f"{field_prefix}instance_type", err.message) from None
    return clean


def _profile_workers(value: Any) -> dict[str, Any] | None:
    return None if value is None else validate_workers(value, field_prefix="workers.")


_FIELD_VALIDATORS = {
    "display_name": validate_display_name,
    "region": validate_region,
    "instance_type": validate_instance_type,
    "ami": validate_ami,
    "volume_gb": validate_volume_gb,
    "spot": validate_spot,
    "environment": validate_environment,
    "idle_stop_minutes": validate_idle_stop_minutes,
    "tags": validate_tags,
    "workers": _profile_workers,
}


def validate_profile_fields(values: Any, *, what: str = "profile") -> dict[str, Any]:
    """Validate a partial mapping of profile fields; unknown keys are refused by name."""
    if not isinstance(values, Mapping):
        raise ValidationError(what, f"A {what} must be a mapping of field names to values.")
    clean: dict[str, Any] = {}
    for key, value in values.items():
        validator = _FIELD_VALIDATORS.get(key)
        if validator is None:
            raise ValidationError(
                str(key)[:40],
                f"{str(key)[:40]!r} is not a {what} field; "
                f"known fields: {', '.join(PROFILE_FIELDS)}.",
            )
        clean[key] = validator(value)
    return clean


@dataclass(frozen=True)
class Profile:
    """A launch profile: what one launcher tile launches. Every field is validated."""

    name: str
    display_name: str
    region: str
    instance_type: str
    ami: str = "ubuntu-24.04"
    volume_gb: int = 30
    spot: bool = False
    environment: dict[str, Any] = field(default_factory=lambda: {"kind": "pip", "packages": []})
    idle_stop_minutes: float = 60
    tags: dict[str, str] = field(default_factory=dict)
    #: Dask workers started with the instance (``{"count", "instance_type"}``), or None.
    workers: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, name: Any, values: Any, defaults: Mapping[str, Any]) -> Profile:
        """Build a profile from its config entry, filling unset fields from ``defaults``."""
        name = validate_profile_name(name)
        clean = validate_profile_fields(values)
        merged = {**validate_profile_fields(defaults, what="default"), **clean}
        for required in ("region", "instance_type"):
            if required not in merged:
                raise ValidationError(required, f"The profile has no {required}.")
        merged.setdefault("display_name", f"{name} ({merged['instance_type']})")
        return cls(name=name, **merged)

    def with_overrides(self, overrides: Any) -> Profile:
        """This profile with a launch request's overrides applied, each validated."""
        try:
            clean = validate_profile_fields(overrides, what="override")
        except ValidationError as err:
            raise err.prefixed("overrides") from None
        return Profile(**{**asdict(self), **clean})

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of ``GET profiles``."""
        return asdict(self)


#: The profile served when none is configured: a small general-purpose machine.
BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"display_name": "CPU (t3.medium)", "instance_type": "t3.medium", "volume_gb": 30},
}


@dataclass(frozen=True)
class ProfileProblem:
    """Why one configured profile (or the default name) is not served."""

    profile: str
    field: str
    message: str

    def __str__(self) -> str:
        if self.field == "default_profile":
            return f"field 'default_profile': {self.message}"
        return f"profile {self.profile!r} is not served: field {self.field!r}: {self.message}"


@dataclass(frozen=True)
class ProfileSet:
    """The profiles a server offers: the good ones, the default, and what was wrong."""

    profiles: dict[str, Profile]
    default: str | None
    problems: tuple[ProfileProblem, ...] = ()

    def get(self, name: Any) -> Profile | None:
        """The profile called ``name``, or None."""
        return self.profiles.get(name) if isinstance(name, str) else None

    def to_json(self) -> dict[str, Any]:
        """The body of ``GET profiles``."""
        return {"default": self.default, "profiles": [p.to_json() for p in self.profiles.values()]}


def load_profiles(raw: Any, default_name: str | None, defaults: Mapping[str, Any]) -> ProfileSet:
    """Validate every configured profile; bad ones are skipped and reported, good ones kept.

    ``defaults`` fills fields a profile leaves out (region, environment, idle minutes) and must
    itself be valid. An empty configuration serves :data:`BUILTIN_PROFILES`.
    """
    problems: list[ProfileProblem] = []
    if not raw:
        raw = BUILTIN_PROFILES
    if not isinstance(raw, Mapping):
        problems.append(ProfileProblem("*", "profiles", "profiles must be a mapping of names."))
        raw = {}
    profiles: dict[str, Profile] = {}
    for name, values in raw.items():
        try:
            profiles[name] = Profile.from_config(name, values, defaults)
        except ValidationError as err:
            problems.append(ProfileProblem(str(name)[:40], err.field or "", err.message))
    default = default_name or None
    if default is not None and default not in profiles:
        why = "is not a configured profile" if default not in raw else "is not valid"
        problems.append(
            ProfileProblem(default, "default_profile", f"default_profile {default!r} {why}.")
        )
        default = None
    if default is None and profiles:
        default = next(iter(profiles))
    return ProfileSet(profiles, default, tuple(problems))


#: The largest launch request body accepted, in bytes.
MAX_REQUEST_BYTES = 16 * 1024
_LAUNCH_FIELDS = ("profile", "name", "overrides")
#: What a launch request may override (a profile's tags and environment stay the admin's).
OVERRIDABLE_FIELDS = ("instance_type", "volume_gb", "spot", "idle_stop_minutes", "ami", "region")


@dataclass(frozen=True)
class LaunchRequest:
    """A validated ``POST instances`` body: which profile, an optional label, overrides."""

    profile: str
    name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Any) -> LaunchRequest:
        """Validate a decoded JSON body; every problem names its field."""
        if not isinstance(body, dict):
            raise ValidationError("body", "The request body must be a JSON object.")
        unknown = [key for key in body if key not in _LAUNCH_FIELDS]
        if unknown:
            raise ValidationError(
                str(unknown[0])[:40],
                f"{str(unknown[0])[:40]!r} is not a launch field; use profile, name, overrides.",
            )
        if "profile" not in body:
            raise ValidationError("profile", "Name the profile to launch.")
        profile = validate_profile_name(body["profile"])
        name = body.get("name")
        if name is not None:
            _expect(name, str, "name", "a string")
            name = name.strip()
            if not name or len(name) > 128 or not name.isprintable():
                raise ValidationError("name", "name must be 1–128 printable characters.")
        overrides = body.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ValidationError("overrides", "overrides must be an object of profile fields.")
        for key in overrides:
            if key not in OVERRIDABLE_FIELDS:
                raise ValidationError(
                    f"overrides.{str(key)[:40]}",
                    f"{str(key)[:40]!r} cannot be overridden at launch; allowed: "
                    f"{', '.join(OVERRIDABLE_FIELDS)}.",
                )
        return cls(profile=profile, name=name, overrides=dict(overrides))

    def resolve(self, profiles: ProfileSet) -> Profile:
        """The profile to launch with the overrides applied and validated."""
        base = profiles.get(self.profile)
        if base is None:
            raise ValidationError("profile", f"There is no launch profile {self.profile!r}.")
        return base.with_overrides(self.overrides)


@dataclass
class LogLine:
    """One line of an instance's log (``seq`` counts from 1)."""

    seq: int
    time: str
    step: str
    text: str


@dataclass
class Instance:
    """What is known of one managed instance; ``to_json`` gives the API's ``Instance``.

    The fields a program derives (``actions``, ``pending``, ``idle``, ``url``, ``tunnel``) are
    passed in by the manager, which owns the rules and the runtime state behind them.
    """

    id: str
    name: str
    profile: str
    region: str
    instance_type: str
    launch_id: str
    phase: Phase = Phase.LAUNCHING
    progress: int = 0
    message: str = ""
    error: dict[str, str] | None = None
    ec2_state: str = "pending"
    launched_at: str = ""
    updated_at: str = ""
    hourly_usd: float | None = None
    remote_port: int | None = None
    token: str | None = None
    local_port: int | None = None
    provisioned: bool = False
    spot: bool = False
    spot_interrupted: bool = False

    #: The fields saved to disk to re-attach after a restart.
    PERSISTENT = (
        "id",
        "name",
        "profile",
        "region",
        "instance_type",
        "launch_id",
        "launched_at",
        "remote_port",
        "token",
        "local_port",
        "provisioned",
        "error",
        "spot",
    )

    def persistent(self) -> dict[str, Any]:
        """The fields saved to disk to re-attach after a restart."""
        return {name: getattr(self, name) for name in self.PERSISTENT}

    def to_json(
        self,
        *,
        actions: list[str],
        pending: bool,
        url: str | None = None,
        tunnel: dict[str, Any] | None = None,
        idle: dict[str, Any] | None = None,
        cost: dict[str, Any] | None = None,
        workers: list[dict[str, Any]] | None = None,
        dask: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The API ``Instance`` (DESIGN.md §4)."""
        return {
            "id": self.id,
            "name": self.name,
            "profile": self.profile,
            "region": self.region,
            "instance_type": self.instance_type,
            "ec2_state": self.ec2_state,
            "phase": self.phase.value,
            "progress": self.progress,
            "message": self.message,
            "error": self.error,
            "tunnel": tunnel,
            "url": url,
            "launched_at": self.launched_at,
            "updated_at": self.updated_at,
            "hourly_usd": self.hourly_usd,
            "actions": actions,
            "pending": pending,
            "idle": idle,
            "cost": cost
            if cost is not None
            else {"so_far_usd": None, "stopped_monthly_usd": None, "estimate": True},
            "workers": workers or [],
            "dask": dask,
        }


# -- saved images (issue 15) ---------------------------------------------------------------------

#: A saved image's id, for routes and validation alike: ``ami-`` and 8 or 17 lower-case hex.
IMAGE_ID_PATTERN = r"ami-(?:[0-9a-f]{8}|[0-9a-f]{17})"
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN, re.ASCII)
_IMAGE_FIELDS = ("name", "reboot")


def validate_image_id(value: Any, field: str = "image_id") -> str:
    """An image id: ``ami-`` followed by 8 or 17 lower-case hex digits."""
    if not isinstance(value, str) or not _IMAGE_ID.fullmatch(value):
        raise ValidationError(
            field, f"{str(value)[:40]!r} is not an image id (ami- and 8 or 17 hex digits)."
        )
    return value


@dataclass(frozen=True)
class ImageRequest:
    """A validated ``POST instances/{id}/image`` body: an optional label and the reboot choice.

    ``reboot`` matters only for a running instance: true stops it, saves a consistent image and
    starts it again (the notebook restarts); false saves it while it runs (no interruption, but
    files being written may be inconsistent in the image). A stopped instance is always imaged
    as it is: consistent.
    """

    name: str | None = None
    reboot: bool = False

    @classmethod
    def from_json(cls, body: Any) -> ImageRequest:
        """Validate a decoded JSON body; every problem names its field."""
        if not isinstance(body, dict):
            raise ValidationError("body", 'The body must be a JSON object like {"reboot": true}.')
        unknown = [key for key in body if key not in _IMAGE_FIELDS]
        if unknown:
            raise ValidationError(
                str(unknown[0])[:40],
                f"{str(unknown[0])[:40]!r} is not an image field; use name, reboot.",
            )
        name = body.get("name")
        if name is not None:
            _expect(name, str, "name", "a string")
            name = name.strip()
            if not name or len(name) > 100 or not name.isprintable():
                raise ValidationError("name", "name must be 1–100 printable characters.")
        reboot = _expect(body.get("reboot", False), bool, "reboot", "true or false")
        return cls(name=name, reboot=reboot)


@dataclass
class Image:
    """A saved image (DESIGN.md §4 ``Image``); ``to_json`` gives the API's shape."""

    id: str
    name: str
    state: str  # pending | available | failed
    source_instance: str | None
    created_at: str
    size_gb: int | None = None
    monthly_usd: float | None = None
    region: str = ""
    environment: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The API ``Image``; ``region`` and ``environment`` are added fields."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "source_instance": self.source_instance,
            "created_at": self.created_at,
            "size_gb": self.size_gb,
            "monthly_usd": self.monthly_usd,
            "region": self.region,
            "environment": self.environment,
        }
