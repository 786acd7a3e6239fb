"""What an AWS account has that moto's lacks: EC2 vCPU quotas and a default VPC that routes out.

Two gaps between moto (5.x) and AWS matter to the preflight checks, and both are closed here in
the least fake way, inside moto, so clients still see them only through the real APIs over HTTP:

- **EC2 service quotas.** moto's Service Quotas knows the ``vpc`` service only and answers
  ``NoSuchResourceException`` for every EC2 quota code, and it has no call that sets a value.
  :func:`install` makes its ``GetServiceQuota`` also answer the EC2 vCPU quotas, in AWS's reply
  shape, from a table: by default every family has :data:`DEFAULT_EC2_VCPU_QUOTA` vCPUs (an
  account whose quotas were raised — a new AWS account has 0 for G, P and the other
  accelerated families); :func:`set_ec2_quota` changes one value, as an approved quota request
  would, until :func:`reset_overrides`.
- **The default VPC's internet gateway.** AWS creates every default VPC with an internet gateway
  attached and a ``0.0.0.0/0`` route to it in the main route table; moto creates the VPC and its
  subnets only. :func:`install` makes moto's ``create_default_vpc`` add both, as AWS does.

Both are patches of moto's backend classes, undone by :func:`uninstall`; moto has one state per
process, like :class:`~jupyter_ec2.testing.cloud.SimulatedCloud`.
"""

from __future__ import annotations

from typing import Any

#: vCPUs of every EC2 family's quota in the simulated account unless a test sets another.
DEFAULT_EC2_VCPU_QUOTA = 64.0

#: EC2's vCPU quota codes and names (on-demand and spot) that the simulated account answers.
EC2_VCPU_QUOTAS = {
    "L-1216C47A": "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
    "L-DB2E81BA": "Running On-Demand G and VT instances",
    "L-417A185B": "Running On-Demand P instances",
    "L-7295265B": "Running On-Demand X instances",
    "L-74FC7D96": "Running On-Demand F instances",
    "L-1945791B": "Running On-Demand Inf instances",
    "L-6E869C2A": "Running On-Demand DL instances",
    "L-2C3B7624": "Running On-Demand Trn instances",
    "L-F7808C92": "Running On-Demand HPC instances",
    "L-43DA4232": "Running On-Demand High Memory instances",
    "L-34B43A08": "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
    "L-3819A6DF": "All G and VT Spot Instance Requests",
    "L-7212CCBC": "All P Spot Instance Requests",
    "L-E3A00192": "All X Spot Instance Requests",
    "L-88CF9481": "All F Spot Instance Requests",
    "L-B5D1601B": "All Inf Spot Instance Requests",
    "L-85EED4F7": "All DL Spot Instance Requests",
    "L-6B0D517C": "All Trn Spot Instance Requests",
}

_overrides: dict[tuple[str | None, str], float] = {}
_saved: dict[str, Any] = {}


def set_ec2_quota(code: str, value: float, region: str | None = None) -> None:
    """Set an EC2 vCPU quota of the simulated account (every region when ``region`` is None)."""
    if code not in EC2_VCPU_QUOTAS:
        raise KeyError(f"{code} is not an EC2 vCPU quota code the simulated account knows")
    _overrides[(region, code)] = float(value)


def reset_overrides() -> None:
    """Every quota back to :data:`DEFAULT_EC2_VCPU_QUOTA`."""
    _overrides.clear()


def ec2_quota(code: str, region: str) -> float:
    """The simulated account's value of an EC2 vCPU quota in a region."""
    return _overrides.get((region, code), _overrides.get((None, code), DEFAULT_EC2_VCPU_QUOTA))


def _quota_reply(account_id: str, region: str, code: str) -> dict[str, Any]:
    return {
        "ServiceCode": "ec2",
        "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
        "QuotaArn": f"arn:aws:servicequotas:{region}:{account_id}:ec2/{code}",
        "QuotaCode": code,
        "QuotaName": EC2_VCPU_QUOTAS[code],
        "Value": ec2_quota(code, region),
        "Unit": "None",
        "Adjustable": True,
        "GlobalQuota": False,
    }


def install() -> None:
    """Patch moto: EC2 quotas in Service Quotas, and an internet gateway in each default VPC."""
    if _saved:
        return
    from moto.ec2.models.vpcs import VPCBackend
    from moto.servicequotas.exceptions import NoSuchResource
    from moto.servicequotas.models import ServiceQuotasBackend

    original_quota = ServiceQuotasBackend.get_service_quota
    original_vpc = VPCBackend.create_default_vpc

    def get_service_quota(self: Any, service_code: str, quota_code: str) -> dict[str, Any]:
        if service_code == "ec2":
            if quota_code not in EC2_VCPU_QUOTAS:
                raise NoSuchResource
            return _quota_reply(self.account_id, self.region_name, quota_code)
        return original_quota(self, service_code, quota_code)

    def create_default_vpc(self: Any) -> Any:
        vpc = original_vpc(self)
        gateway = self.create_internet_gateway()
        self.attach_internet_gateway(gateway.id, vpc.id)
        for table in self.route_tables.values():
            if table.vpc_id == vpc.id and table.main_association_id:
                self.create_route(table.id, "0.0.0.0/0", gateway_id=gateway.id)
        return vpc

    _saved.update(quota=original_quota, vpc=original_vpc)
    ServiceQuotasBackend.get_service_quota = get_service_quota  # type: ignore[method-assign]
    VPCBackend.create_default_vpc = create_default_vpc  # type: ignore[method-assign]


def uninstall() -> None:
    """Undo :func:`install` and forget every quota set."""
    if not _saved:
        return
    from moto.ec2.models.vpcs import VPCBackend
    from moto.servicequotas.models import ServiceQuotasBackend

    ServiceQuotasBackend.get_service_quota = _saved.pop("quota")  # type: ignore[method-assign]
    VPCBackend.create_default_vpc = _saved.pop("vpc")  # type: ignore[method-assign]
    reset_overrides()
