"""'Check my AWS setup': the preflight checks, their order, their words and their cache.

:class:`Preflight` runs the checks of DESIGN.md §4 in order — ``credentials``, ``identity``,
``region``, ``permissions``, ``quota``, ``network``, ``images``, ``ssh_client`` — on the answers of
:class:`~jupyter_ec2.aws_preflight.AccountProbe` (the only part that talks to AWS) and of the
local OpenSSH client. Each check ends ``ok``, ``fail`` or ``skip`` (it could not be made because
an earlier check failed) with a message and, when it fails, a one-sentence fix. A check that
fails for one profile only (no quota for its family, no image, a type the region does not
offer) names the profile, so the launch form can disable that profile and say why.

A report is kept for :attr:`Preflight.max_age` seconds and shared by every caller; ``refresh``
runs the checks again. Everything here blocks (the manager calls it in a worker thread) and
nothing changes the account: see :mod:`jupyter_ec2.aws_preflight`. :class:`ManagerPreflight`
is the manager's instance (``manager.preflight_checks``): it answers ``GET preflight`` from a
worker thread and, when a launch fails for a reason a check covers, drops the kept report.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .aws import EC2Backend, architecture_for
from .aws_preflight import (
    AccountProbe,
    ActionProbe,
    CredentialFacts,
    DryRunContext,
    IdentityFacts,
    QuotaFacts,
    TypeFacts,
)
from .errors import EC2LauncherError, ValidationError
from .models import Profile

if TYPE_CHECKING:
    from .manager import LaunchManager

#: The checks, in the order they run and are reported (a contract: DESIGN.md §4).
CHECK_NAMES = (
    "credentials",
    "identity",
    "region",
    "permissions",
    "quota",
    "network",
    "images",
    "ssh_client",
)
#: Checks whose failure for a profile disables launching that profile.
BLOCKING_CHECKS = ("region", "quota", "images")

#: Where a user reads about each check (docs/preflight.md).
DOC_HINT = "Check setup in the EC2 panel, or `jupyter ec2 doctor`"


# -- vCPU quotas (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaFamily:
    """One Service Quotas bucket of EC2 vCPUs, with its on-demand and spot codes."""

    label: str
    on_demand: str
    spot: str | None


#: EC2's vCPU quotas by instance family (Service Quotas, service code ``ec2``).
QUOTA_FAMILIES: dict[str, QuotaFamily] = {
    "standard": QuotaFamily(
        "Standard (A, C, D, H, I, M, R, T, Z) instances", "L-1216C47A", "L-34B43A08"
    ),
    "g": QuotaFamily("G and VT instances", "L-DB2E81BA", "L-3819A6DF"),
    "p": QuotaFamily("P instances", "L-417A185B", "L-7212CCBC"),
    "x": QuotaFamily("X instances", "L-7295265B", "L-E3A00192"),
    "f": QuotaFamily("F instances", "L-74FC7D96", "L-88CF9481"),
    "inf": QuotaFamily("Inf instances", "L-1945791B", "L-B5D1601B"),
    "dl": QuotaFamily("DL instances", "L-6E869C2A", "L-85EED4F7"),
    "trn": QuotaFamily("Trn instances", "L-2C3B7624", "L-6B0D517C"),
    "hpc": QuotaFamily("HPC instances", "L-F7808C92", None),
    "high-memory": QuotaFamily("High Memory instances", "L-43DA4232", None),
}
_STANDARD_LETTERS = set("acdhimrtz")


def quota_family(instance_type: str) -> str | None:
    """The quota bucket of an instance type (``g5.xlarge`` → ``g``), or None if none is known."""
    family = instance_type.split(".", 1)[0].lower()
    if family.startswith("u-") or re.match(r"^u\d", family):
        return "high-memory"
    letters = re.match(r"^[a-z]+", family)
    if not letters:
        return None
    prefix = letters.group(0)
    if prefix == "vt" or prefix.startswith("g"):
        return "g"
    for name in ("inf", "trn", "dl", "hpc"):
        if prefix.startswith(name):
            return name
    if prefix.startswith("mac"):
        return None  # dedicated hosts only
    if prefix[0] in ("p", "x", "f"):
        return prefix[0]
    if prefix[0] in _STANDARD_LETTERS:
        return "standard"
    return None


def quota_code(instance_type: str, spot: bool) -> tuple[str, str] | None:
    """(Service Quotas code, words) of the vCPU quota an instance type counts against."""
    name = quota_family(instance_type)
    if name is None:
        return None
    family = QUOTA_FAMILIES[name]
    if spot:
        if family.spot is None:
            return None
        return family.spot, f"All {family.label.replace(' instances', '')} Spot Instance Requests"
    return family.on_demand, f"Running On-Demand {family.label}"


# -- results --------------------------------------------------------------------------------------


@dataclass
class ProfileVerdict:
    """One profile's outcome in a check that looks at each profile."""

    ok: bool
    message: str

    def to_json(self) -> dict[str, Any]:
        """``{"ok", "message"}``."""
        return {"ok": self.ok, "message": self.message}


@dataclass
class Check:
    """One check: ``status`` is ok, fail or skip; ``fix`` says what to do when it is not ok."""

    name: str
    status: str
    message: str
    fix: str | None = None
    profiles: dict[str, ProfileVerdict] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the check passed."""
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        """The API's ``{"name", "ok", "message", "fix"}``, plus status, profiles and details."""
        body: dict[str, Any] = {
            "name": self.name,
            "ok": self.ok,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
        }
        if self.profiles:
            body["profiles"] = {k: v.to_json() for k, v in self.profiles.items()}
        if self.details:
            body["details"] = list(self.details)
        return body


@dataclass
class Report:
    """Every check, in order, and when they ran."""

    checks: list[Check]
    checked_at: str
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        return next(c for c in self.checks if c.name == name)

    def blocked_profiles(self) -> dict[str, dict[str, str]]:
        """Profiles a launch would fail for: ``{profile: {"check", "message"}}``, first reason."""
        blocked: dict[str, dict[str, str]] = {}
        for check in self.checks:
            if check.name not in BLOCKING_CHECKS:
                continue
            for profile, verdict in check.profiles.items():
                if not verdict.ok and profile not in blocked:
                    blocked[profile] = {"check": check.name, "message": verdict.message}
        return blocked

    def to_json(self) -> dict[str, Any]:
        """The ``GET preflight`` answer."""
        return {
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
            "checked_at": self.checked_at,
            "blocked_profiles": self.blocked_profiles(),
        }


def skipped(name: str, failed: str) -> Check:
    """A check that could not be made because the check ``failed`` did not pass."""
    return Check(
        name,
        "skip",
        f"Not checked: it needs AWS, and the {failed} check failed.",
        f"Fix the {failed} check first, then check again.",
    )


# -- the words of each check (pure) ---------------------------------------------------------------

_METHODS = {
    "env": "environment variables (AWS_ACCESS_KEY_ID)",
    "shared-credentials-file": "the shared credentials file (~/.aws/credentials)",
    "config-file": "the AWS config file (~/.aws/config)",
    "sso": "AWS IAM Identity Center (SSO)",
    "assume-role": "an assumed role",
    "assume-role-with-web-identity": "a web identity role",
    "custom-process": "a credential_process",
    "iam-role": "the instance role (instance metadata)",
    "container-role": "the container role",
    "explicit": "explicit keys",
}
_NO_CREDENTIALS_FIX = (
    "Run `aws configure` (or `aws sso login --profile NAME` and set c.EC2Backend.aws_profile), "
    "or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, then restart JupyterLab."
)


def credentials_check(facts: CredentialFacts, identity: IdentityFacts | None) -> Check:
    """``credentials``: found, loadable and accepted by AWS."""
    profile = facts.profile or "NAME"
    if facts.problem == "sso_expired":
        return Check(
            "credentials",
            "fail",
            f"The SSO session of AWS profile {profile!r} has expired (or was never started).",
            f"Run `aws sso login --profile {profile}`, then check again.",
        )
    if facts.problem == "sso":
        return Check(
            "credentials",
            "fail",
            f"The SSO credentials of AWS profile {profile!r} could not be loaded: {facts.detail}",
            f"Run `aws sso login --profile {profile}`, or fix the profile's sso_* settings.",
        )
    if facts.problem == "profile_missing":
        return Check(
            "credentials",
            "fail",
            f"The AWS profile {profile!r} (c.EC2Backend.aws_profile or AWS_PROFILE) is not in "
            "the AWS config.",
            f"Run `aws configure --profile {profile}`, or fix the profile name.",
        )
    if facts.problem == "none" or not facts.found:
        return Check(
            "credentials",
            "fail",
            "No AWS credentials were found in the environment, ~/.aws or an SSO or instance role.",
            _NO_CREDENTIALS_FIX,
        )
    if facts.problem == "load_failed":
        return Check(
            "credentials",
            "fail",
            f"The AWS credentials could not be loaded: {facts.detail}",
            _NO_CREDENTIALS_FIX,
        )
    source = _METHODS.get(facts.method or "", facts.method or "an unknown source")
    if identity is not None and identity.error_code in (
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
    ):
        fix = (
            f"Run `aws sso login --profile {profile}`, then check again."
            if facts.method == "sso"
            else "Get new temporary credentials (the session token has expired), then restart "
            "JupyterLab."
        )
        return Check(
            "credentials",
            "fail",
            f"The credentials from {source} have expired ({identity.error_code}).",
            fix,
        )
    if identity is not None and identity.error_code in (
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "AuthFailure",
        "InvalidAccessKeyId",
    ):
        return Check(
            "credentials",
            "fail",
            f"AWS does not accept the credentials from {source} ({identity.error_code}): the "
            "key was deleted or mistyped.",
            "Create a new access key (IAM console → Security credentials) and run "
            "`aws configure`, then restart JupyterLab.",
        )
    message = f"Found, from {source}"
    if facts.profile:
        message += f" (profile {facts.profile})"
    if facts.expires_at:
        message += f"; they expire at {facts.expires_at} and are renewed as they do"
    return Check("credentials", "ok", message + ".")


def identity_check(identity: IdentityFacts) -> Check:
    """``identity``: the account and the principal the credentials act as."""
    if identity.account:
        return Check("identity", "ok", f"Account {identity.account} as {identity.arn}.")
    return Check(
        "identity",
        "fail",
        f"AWS did not say who these credentials belong to (sts:GetCallerIdentity: "
        f"{identity.error_code}: {identity.error}).",
        "Check the network connection and c.EC2Backend.endpoint_url, then check again.",
    )


# -- the checks -----------------------------------------------------------------------------------


def _profiles_by_region(profiles: Iterable[Profile]) -> dict[str, list[Profile]]:
    grouped: dict[str, list[Profile]] = {}
    for profile in profiles:
        grouped.setdefault(profile.region, []).append(profile)
    return grouped


class Preflight:
    """Runs the checks on a backend's account and keeps the report briefly."""

    def __init__(
        self,
        backend: EC2Backend,
        profiles: Callable[[], Sequence[Profile]],
        *,
        ssh_engine: Callable[[], str] | None = None,
        max_age: float = 60.0,
        probe: AccountProbe | None = None,
        which: Callable[[str], str | None] = shutil.which,
    ):
        self.backend = backend
        self.probe = probe or AccountProbe(backend)
        self._profiles = profiles
        self._ssh_engine = ssh_engine or (lambda: "auto")
        self.max_age = max_age
        self._which = which
        self._lock = threading.Lock()
        self._report: Report | None = None
        self._at = 0.0

    # -- cache ----------------------------------------------------------------------------------

    def report(self, refresh: bool = False) -> Report:
        """The last report if younger than ``max_age`` (and not ``refresh``), else a new one.

        Callers arriving while checks run wait for them and share their report.
        """
        asked = time.monotonic()
        with self._lock:
            fresh = self._report is not None and (
                (not refresh and asked - self._at < self.max_age) or self._at >= asked
            )
            if fresh:
                assert self._report is not None
                return self._report
            report = self.run()
            self._report, self._at = report, time.monotonic()
            return report

    def invalidate(self) -> None:
        """Forget the kept report (a launch just failed for a reason a check covers)."""
        with self._lock:
            self._report = None

    def cached(self) -> Report | None:
        """The kept report, however old, or None."""
        return self._report

    # -- running --------------------------------------------------------------------------------

    def run(self) -> Report:
        """Every check, in order (no cache)."""
        started = time.monotonic()
        profiles = list(self._profiles())
        checks: list[Check] = []
        facts = self.probe.credentials()
        identity: IdentityFacts | None = None
        if facts.found and facts.problem is None:
            identity = self.probe.identity(self.backend.region)
        credentials = credentials_check(facts, identity)
        checks.append(credentials)
        if not credentials.ok:
            checks += [skipped(n, "credentials") for n in CHECK_NAMES[1:7]]
        else:
            assert identity is not None
            ident = identity_check(identity)
            checks.append(ident)
            if not ident.ok:
                checks += [skipped(n, "identity") for n in CHECK_NAMES[2:7]]
            else:
                checks += self._aws_checks(profiles, identity)
        checks.append(self.ssh_client_check())
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return Report(checks, now, round(time.monotonic() - started, 3))

    def _aws_checks(self, profiles: list[Profile], identity: IdentityFacts) -> list[Check]:
        types: dict[str, dict[str, TypeFacts]] = {}
        for region, group in _profiles_by_region(profiles).items():
            try:
                types[region] = self.probe.type_facts(region, {p.instance_type for p in group})
            except EC2LauncherError:
                types[region] = {}
        region = self._guard("region", lambda: self.region_check(profiles))
        network = self._guard("network", lambda: self.network_check(profiles))
        images, resolved = self.images_check(profiles, types)
        permissions = self._guard(
            "permissions", lambda: self.permissions_check(profiles, identity, resolved)
        )
        quota = self._guard("quota", lambda: self.quota_check(profiles, types))
        return [region, permissions, quota, network, images]

    @staticmethod
    def _guard(name: str, run: Callable[[], Check]) -> Check:
        """Run one check; an AWS error it did not expect fails the check, not the report."""
        try:
            return run()
        except EC2LauncherError as err:
            return Check(
                name,
                "fail",
                f"The check could not be made: {err.message}",
                "Fix what the message says, then check again.",
            )

    # region -------------------------------------------------------------------------------------

    def region_check(self, profiles: list[Profile]) -> Check:
        """``region``: each region in use is enabled and offers its profiles' instance types."""
        grouped = _profiles_by_region(profiles)
        regions = sorted({self.backend.region, *grouped})
        problems: list[str] = []
        fixes: list[str] = []
        notes: list[str] = []
        verdicts: dict[str, ProfileVerdict] = {}
        for region in regions:
            status = self.probe.region_opt_in(region)
            if status == "not-opted-in":
                problems.append(f"{region} is not enabled for this account")
                fixes.append(
                    f"Enable {region} (AWS console → Account → AWS Regions) or use another region."
                )
                for profile in grouped.get(region, []):
                    verdicts[profile.name] = ProfileVerdict(
                        False, f"Region {region} is not enabled for this account."
                    )
                continue
            if status == "unknown":
                notes.append(f"{region}: opt-in not checked (ec2:DescribeRegions not allowed)")
            elif status is None:
                problems.append(f"EC2 does not know the region {region}")
                fixes.append("Use a region EC2 lists, such as us-east-1.")
                continue
            group = grouped.get(region, [])
            offered = self.probe.offered_types(region, {p.instance_type for p in group})
            for profile in group:
                if profile.instance_type in offered:
                    verdicts[profile.name] = ProfileVerdict(
                        True, f"{profile.instance_type} is offered in {region}."
                    )
                else:
                    message = (
                        f"{profile.instance_type} is not offered in {region} "
                        f"(profile {profile.name})."
                    )
                    problems.append(message[:-1])
                    verdicts[profile.name] = ProfileVerdict(False, message)
                    fixes.append(
                        f"Pick an instance type offered in {region} for profile "
                        f"{profile.name!r}, or set its region to one that offers "
                        f"{profile.instance_type}."
                    )
        if problems:
            return Check("region", "fail", "; ".join(problems) + ".", fixes[0], verdicts)
        types = ", ".join(sorted({p.instance_type for p in profiles})) or "no profile types"
        message = f"{', '.join(regions)}: enabled; offers {types}"
        if notes:
            message = f"{', '.join(regions)}: offers {types}; " + "; ".join(notes)
        return Check("region", "ok", message + ".", None, verdicts, details=notes)

    # permissions -------------------------------------------------------------------------------

    def permissions_check(
        self, profiles: list[Profile], identity: IdentityFacts, resolved: Mapping[str, Any]
    ) -> Check:
        """``permissions``: every API action of the lifecycle, probed by dry run or simulator."""
        region = self.backend.region
        network = self.probe.network(region, self.backend.subnet_id)
        sample = next((p for p in profiles if p.name in resolved), None)
        from .keys import generate_ed25519

        ctx = DryRunContext(
            region=region,
            vpc_id=network.vpc_id,
            subnet_id=network.subnet_id if self.backend.subnet_id else None,
            group_id=self.probe.default_group_id(region, network.vpc_id),
            image=resolved.get(sample.name) if sample else None,
            instance_type=sample.instance_type if sample else "t3.micro",
            public_key=generate_ed25519(comment="jupyter-ec2-preflight").public_openssh,
        )
        probes = self.probe.dry_runs(ctx)
        unknown = [p.action for p in probes if p.verdict == "unknown"]
        if ctx.image is None:
            unknown.append("ec2:RunInstances")
        # No dry run exists for IAM: spot launches may need the spot service-linked role.
        if any(p.spot for p in profiles):
            unknown.append("iam:CreateServiceLinkedRole")
        simulated: dict[str, str] = {}
        why_not: str | None = None
        if unknown and identity.arn:
            simulated, why_not = self.probe.simulate(region, identity.arn, unknown)
        results = [
            p
            if p.verdict != "unknown" or p.action not in simulated
            else ActionProbe(p.action, simulated[p.action], "simulator")
            for p in probes
        ]
        denied = [p.action for p in results if p.verdict == "denied"]
        denied += [a for a, v in simulated.items() if v == "denied" and a not in denied]
        unverified = [a for a in unknown if a not in simulated]
        details = [f"{p.action}: {p.verdict} ({p.how})" for p in results]
        details += [
            f"{a}: {v} (simulator)"
            for a, v in simulated.items()
            if a not in {p.action for p in results}
        ]
        if denied:
            return Check(
                "permissions",
                "fail",
                f"The AWS identity may not call {', '.join(denied)}: launches would fail with "
                "UnauthorizedOperation.",
                f"Add {', '.join(denied)} to the identity's IAM policy (docs/iam-policy.json "
                "lists every action jupyter-ec2 needs), then check again.",
                details=details,
            )
        allowed = sum(1 for p in results if p.verdict == "allowed")
        message = f"{allowed} API actions allowed (probed with DryRun, nothing created)"
        if simulated:
            message += f"; {len(simulated)} checked with the IAM policy simulator"
        if unverified:
            codes = sorted({p.code for p in probes if p.verdict == "unknown" and p.code})
            reasons = [f"the dry run answered {', '.join(codes)}"] if codes else []
            reasons.append(why_not or "no dry run exists for it")
            message += f"; could not be checked: {', '.join(unverified)} ({'; '.join(reasons)})"
        return Check("permissions", "ok", message + ".", None, details=details)

    # quota --------------------------------------------------------------------------------------

    def quota_check(
        self, profiles: list[Profile], types: Mapping[str, Mapping[str, TypeFacts]]
    ) -> Check:
        """``quota``: each profile's vCPUs fit its family's on-demand or spot vCPU quota."""
        verdicts: dict[str, ProfileVerdict] = {}
        failures: list[tuple[Profile, str, str]] = []
        notes: list[str] = []
        cache: dict[tuple[str, str], QuotaFacts] = {}
        for profile in profiles:
            facts = types.get(profile.region, {}).get(profile.instance_type)
            found = quota_code(profile.instance_type, profile.spot)
            if facts is None or facts.vcpus is None:
                notes.append(f"{profile.name}: {profile.instance_type} is unknown to EC2")
                continue
            if found is None:
                notes.append(f"{profile.name}: no vCPU quota is known for {profile.instance_type}")
                continue
            code, words = found
            key = (profile.region, code)
            if key not in cache:
                cache[key] = self.probe.service_quota(profile.region, code)
            quota = cache[key]
            market = "spot" if profile.spot else "on-demand"
            if quota.value is None:
                notes.append(
                    f"{profile.name}: the quota {words} ({code}) could not be read "
                    f"({quota.error_code}); allow servicequotas:GetServiceQuota to check it"
                )
                continue
            need = facts.vcpus
            if quota.value < need:
                message = (
                    f"{profile.instance_type} needs {need} vCPUs but the {market} quota "
                    f'"{words}" ({code}) in {profile.region} is {quota.value:g}.'
                )
                verdicts[profile.name] = ProfileVerdict(False, message)
                failures.append((profile, message, code))
            else:
                verdicts[profile.name] = ProfileVerdict(
                    True,
                    f"{profile.instance_type} needs {need} vCPUs; the {market} quota is "
                    f"{quota.value:g}.",
                )
        if failures:
            profile, _, code = failures[0]
            message = " ".join(f"Profile {p.name!r}: {m}" for p, m, _ in failures)
            fix = (
                f"Request a quota increase for {code} in {profile.region} (Service Quotas console "
                f"→ Amazon EC2, or `aws service-quotas request-service-quota-increase "
                f"--service-code ec2 --quota-code {code} --desired-value N`), or pick a smaller "
                "type."
            )
            return Check("quota", "fail", message, fix, verdicts, details=notes)
        ok_count = sum(1 for v in verdicts.values() if v.ok)
        message = f"{ok_count} profile(s) fit their vCPU quotas"
        if notes:
            message += "; not checked: " + "; ".join(notes)
        return Check("quota", "ok", message + ".", None, verdicts, details=notes)

    # network ------------------------------------------------------------------------------------

    def network_check(self, profiles: list[Profile]) -> Check:
        """``network``: the subnet launches use exists and routes to an internet gateway."""
        regions = sorted({self.backend.region, *(p.region for p in profiles)})
        problems: list[tuple[str, str]] = []
        good: list[str] = []
        for region in regions:
            subnet = self.backend.subnet_id if region == self.backend.region else None
            facts = self.probe.network(region, subnet)
            where = f"subnet {subnet}" if subnet else f"the default VPC of {region}"
            if facts.problem == "no_default_vpc":
                problems.append(
                    (
                        f"{region} has no default VPC",
                        f"Create one with `aws ec2 create-default-vpc --region {region}`, or set "
                        "c.EC2Backend.subnet_id to a public subnet.",
                    )
                )
            elif facts.problem == "subnet_missing":
                problems.append(
                    (
                        f"subnet {subnet} (c.EC2Backend.subnet_id) does not exist in {region}",
                        "Fix c.EC2Backend.subnet_id, or unset it to use the default VPC.",
                    )
                )
            elif facts.problem == "no_subnet":
                problems.append(
                    (
                        f"the default VPC of {region} has no default subnet",
                        f"Create one with `aws ec2 create-default-subnet --availability-zone "
                        f"{region}a`, or set c.EC2Backend.subnet_id.",
                    )
                )
            elif facts.problem == "no_route":
                problems.append(
                    (
                        f"{where} has no route to an internet gateway, so SSH cannot reach "
                        "an instance",
                        "Attach an internet gateway to the VPC and add a 0.0.0.0/0 route to it "
                        "in the subnet's route table, or use another subnet.",
                    )
                )
            elif facts.problem == "route_unknown":
                good.append(
                    f"{where} ({facts.vpc_id}) exists; its route to the internet was not checked "
                    "(ec2:DescribeRouteTables not allowed)"
                )
            elif facts.problem == "error":
                problems.append(
                    (
                        f"the network of {region} could not be read ({facts.detail})",
                        "Allow ec2:DescribeVpcs, DescribeSubnets and DescribeRouteTables.",
                    )
                )
            else:
                good.append(f"{where} ({facts.vpc_id}) routes to an internet gateway")
        if problems:
            return Check("network", "fail", "; ".join(p for p, _ in problems) + ".", problems[0][1])
        return Check("network", "ok", "; ".join(good) + ".")

    # images -------------------------------------------------------------------------------------

    def images_check(
        self, profiles: list[Profile], types: Mapping[str, Mapping[str, TypeFacts]]
    ) -> tuple[Check, dict[str, Any]]:
        """``images``: an image resolves for each profile; also returns profile → image."""
        verdicts: dict[str, ProfileVerdict] = {}
        resolved: dict[str, Any] = {}
        notes: list[str] = []
        failures: list[str] = []
        fix = None
        for profile in profiles:
            facts = types.get(profile.region, {}).get(profile.instance_type)
            if facts is None or not facts.architectures:
                notes.append(
                    f"{profile.name}: {profile.instance_type} is unknown, image not checked"
                )
                continue
            try:
                arch = architecture_for(facts.architectures)
                image = self.probe.resolve_image(profile.ami, arch, profile.region)
            except ValidationError as err:
                message = f"Profile {profile.name!r}: {err.message}"
                verdicts[profile.name] = ProfileVerdict(False, err.message)
                failures.append(message)
                fix = fix or (
                    f"Set profile {profile.name!r}'s ami to ubuntu-24.04, ubuntu-22.04 or an "
                    f"image id that exists in {profile.region} for {arch}."
                )
                continue
            except EC2LauncherError as err:
                verdicts[profile.name] = ProfileVerdict(False, err.message)
                failures.append(f"Profile {profile.name!r}: {err.message}")
                fix = fix or "Allow ec2:DescribeImages, then check again."
                continue
            resolved[profile.name] = image
            verdicts[profile.name] = ProfileVerdict(
                True, f"{profile.ami} → {image.image_id} ({arch}) in {profile.region}."
            )
        if failures:
            return Check("images", "fail", " ".join(failures), fix, verdicts, notes), resolved
        message = f"An image resolves for {len(resolved)} profile(s)"
        if notes:
            message += "; " + "; ".join(notes)
        return Check("images", "ok", message + ".", None, verdicts, notes), resolved

    # ssh client ---------------------------------------------------------------------------------

    def ssh_client_check(self) -> Check:
        """``ssh_client``: the OpenSSH client the forward runs on (``TunnelManager.engine``)."""
        engine = self._ssh_engine()
        ssh = self._which("ssh")
        if engine == "paramiko":
            return Check(
                "ssh_client",
                "ok",
                "The forward uses paramiko (c.TunnelManager.engine = 'paramiko'); no OpenSSH "
                "client is needed.",
            )
        if ssh is None:
            return Check(
                "ssh_client",
                "fail",
                "No OpenSSH client (ssh) is on the PATH of the Jupyter server; the port forward "
                "runs on it"
                + (
                    " (it falls back to the slower paramiko engine)."
                    if engine == "auto"
                    else " (c.TunnelManager.engine = 'openssh')."
                ),
                "Install the OpenSSH client (`sudo apt install openssh-client`, `brew install "
                'openssh`, or Windows\' optional feature "OpenSSH Client") and restart '
                "JupyterLab, or set c.TunnelManager.engine = 'paramiko'.",
            )
        version = ssh_version(ssh)
        return Check("ssh_client", "ok", f"{version or 'OpenSSH'} at {ssh}.")


def ssh_version(ssh: str) -> str | None:
    """What ``ssh -V`` says (``OpenSSH_9.2p1 …``), or None when it does not run."""
    try:
        done = subprocess.run(  # noqa: S603 - a fixed argv, the resolved ssh binary
            [ssh, "-V"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = (done.stderr or done.stdout).strip().splitlines()
    return text[0][:120] if text else None


# -- errors that a check explains (pure) -----------------------------------------------------------

_CHECK_OF_CODE = {
    "UnauthorizedOperation": "permissions",
    "AccessDenied": "permissions",
    "AccessDeniedException": "permissions",
    "NoCredentials": "credentials",
    "ExpiredToken": "credentials",
    "RequestExpired": "credentials",
    "AuthFailure": "credentials",
    "InvalidClientTokenId": "credentials",
    "SignatureDoesNotMatch": "credentials",
    "VcpuLimitExceeded": "quota",
    "MaxSpotInstanceCountExceeded": "quota",
    "InstanceLimitExceeded": "quota",
}


def check_for_error(err: EC2LauncherError) -> str | None:
    """The preflight check that explains a launch failure, or None."""
    if err.code in _CHECK_OF_CODE:
        return _CHECK_OF_CODE[err.code]
    field_name = (err.field or "").rsplit(".", 1)[-1]
    text = err.message.lower()
    if field_name == "subnet_id":
        return "network"
    if field_name == "ami":
        return "images"
    if field_name == "instance_type" and "not offered" in text:
        return "region"
    if "unauthorizedoperation" in text or "not authorized" in text:
        return "permissions"
    if "vcpulimitexceeded" in text:
        return "quota"
    return None


def point_to_check(err: EC2LauncherError) -> EC2LauncherError:
    """The same error, its message ending with a pointer to the check that explains it."""
    name = check_for_error(err)
    if name is None or "check setup" in err.message.lower():
        return err
    err.message = f"{err.message} See the {name!r} check in {DOC_HINT}."
    err.args = (err.message,)
    err.check = name  # type: ignore[attr-defined]
    return err


class ManagerPreflight(Preflight):
    """The manager's checks (``manager.preflight_checks``): ``GET preflight``, failed launches."""

    def __init__(self, manager: LaunchManager):
        super().__init__(
            manager.backend,
            lambda: list(manager.profiles.profiles.values()),
            ssh_engine=lambda: str(getattr(manager.tunnels, "engine", "auto")),
        )
        self.manager = manager

    async def report_json(self, refresh: bool = False) -> dict[str, Any]:
        """``GET preflight``: the setup checks, run in a worker thread and kept briefly."""
        report = await self.manager._thread(self.report, refresh)
        return report.to_json()

    def launch_failed(self, err: EC2LauncherError) -> None:
        """A launch failed: name the preflight check that explains it, and re-check next time."""
        if point_to_check(err) is err and getattr(err, "check", None):
            self.invalidate()


__all__ = [
    "CHECK_NAMES",
    "Check",
    "ManagerPreflight",
    "Preflight",
    "ProfileVerdict",
    "Report",
    "check_for_error",
    "point_to_check",
    "quota_code",
    "quota_family",
]
