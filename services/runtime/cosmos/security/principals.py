"""Who is calling, and what they may do: principals, roles and the permissions they grant.

A :class:`Principal` is proven by a certificate (its SPIFFE id names a workload role; a user's
certificate also names its tenant and roles) or by a platform token. Roles grant permissions
(:data:`ROLE_PERMISSIONS`); workloads have fixed permissions (:data:`WORKLOAD_PERMISSIONS`). The
services Optimus, Plato and the console act for the people who called them: they pass the caller
along (:data:`ON_BEHALF_OF`) and the next service authorizes *that* caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from cosmos import errors
from cosmos.common.v1 import access_pb2

P = access_pb2.Permission
READ = frozenset(
    {
        P.PERMISSION_ENCODES_READ,
        P.PERMISSION_DEFINITIONS_READ,
        P.PERMISSION_WORKFLOWS_READ,
        P.PERMISSION_JOBS_READ,
        P.PERMISSION_POOL_READ,
    }
)
SUBMIT = READ | {P.PERMISSION_ENCODES_WRITE, P.PERMISSION_WORKFLOWS_WRITE, P.PERMISSION_JOBS_WRITE}
OPERATE = SUBMIT | {P.PERMISSION_POOL_ADMIN}
# Minting agent identities (join tokens) is admin's alone: an agent receives every tenant's jobs.
EVERYTHING = OPERATE | {
    P.PERMISSION_DEFINITIONS_WRITE,
    P.PERMISSION_STEPS_REPORT,
    P.PERMISSION_AGENTS_ENROLL,
}

ROLE_PERMISSIONS: dict[str, frozenset[access_pb2.Permission.ValueType]] = {
    "viewer": READ,
    "submitter": SUBMIT,
    "operator": OPERATE,
    "admin": EVERYTHING,
    "worker": frozenset({P.PERMISSION_STEPS_REPORT, P.PERMISSION_DEFINITIONS_READ}),
}
"""Roles people and programs hold (in a user certificate's OU values or a token's ``roles``)."""

WORKLOAD_PERMISSIONS: dict[str, frozenset[access_pb2.Permission.ValueType]] = {
    # Optimus registers its encode workflow and starts, reads and cancels encodes for its callers.
    "optimus": frozenset(
        {P.PERMISSION_DEFINITIONS_READ, P.PERMISSION_DEFINITIONS_WRITE, P.PERMISSION_WORKFLOWS_READ}
    ),
    # Plato's built-in runner submits, follows and cancels the jobs of job steps.
    "plato": frozenset({P.PERMISSION_JOBS_READ, P.PERMISSION_JOBS_WRITE, P.PERMISSION_STEPS_REPORT}),
    "stratum": frozenset(),
    "agent": frozenset({P.PERMISSION_AGENT_CONNECT}),
    "console": READ,
}
"""What a workload may do in its own name (certificate role other than ``user``)."""

DELEGATES = frozenset({"optimus", "plato", "console"})
"""Workloads trusted to act for the caller they name in :data:`ON_BEHALF_OF`."""
ON_BEHALF_OF = "x-cosmos-on-behalf-of"
"""Metadata naming the principal a delegating workload acts for."""
ADMIN = "admin"


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    kind: str
    """Workload role of its certificate (optimus, plato, stratum, agent, console, user) or ``token``."""
    name: str
    """Its name: agent id, user name, token subject."""
    tenant: str = ""
    """Its tenant (people and programs); workloads have none."""
    roles: frozenset[str] = frozenset()
    """Its roles (people and programs)."""
    via: str = "certificate"
    """How it was proven: ``certificate``, ``token``, ``delegation`` or ``insecure``."""

    @property
    def identity(self) -> str:
        """``<kind>/<name>``, as logs and audit lines show it."""
        return f"{self.kind}/{self.name}"

    @property
    def is_person(self) -> bool:
        """A user or program (holds roles and a tenant), not a workload."""
        return self.kind in ("user", "token")

    @property
    def permissions(self) -> frozenset[access_pb2.Permission.ValueType]:
        """Everything it may do."""
        if not self.is_person:
            return WORKLOAD_PERMISSIONS.get(self.kind, frozenset())
        granted: set[access_pb2.Permission.ValueType] = set()
        for role in self.roles:
            granted |= ROLE_PERMISSIONS.get(role, frozenset())
        return frozenset(granted)

    @property
    def all_tenants(self) -> bool:
        """Sees and acts on every tenant's resources (admins, and workloads acting for themselves)."""
        return ADMIN in self.roles or not self.is_person

    def sees(self, tenant: str) -> bool:
        """Whether a resource of ``tenant`` exists for this caller (else it answers NOT_FOUND)."""
        return self.all_tenants or tenant == self.tenant

    def require(self, permission: access_pb2.Permission.ValueType) -> None:
        """:class:`PermissionDeniedError` naming ``permission`` unless granted."""
        if permission not in self.permissions:
            name = access_pb2.Permission.Name(permission)
            raise errors.PermissionDeniedError(
                f"{self.identity} lacks {name}",
                reason=errors.Reason.ERROR_REASON_PERMISSION_DENIED,
                metadata={"permission": name, "identity": self.identity},
            )

    def delegation(self) -> str:
        """This principal as the value of :data:`ON_BEHALF_OF`."""
        return encode_delegation(self)


def check_roles(roles: Iterable[str]) -> frozenset[str]:
    """``roles`` if each is known; :class:`ConfigError` naming an unknown one."""
    out = frozenset(r.strip() for r in roles if r.strip())
    unknown = sorted(out - ROLE_PERMISSIONS.keys())
    if unknown:
        raise errors.ConfigError(f"unknown role {unknown[0]!r}; roles: {', '.join(ROLE_PERMISSIONS)}")
    return out


def encode_delegation(principal: Principal) -> str:
    """``tenant=T;name=N;roles=a,b`` (names and tenants hold no ``;``, ``=`` or ``,``)."""
    return f"tenant={principal.tenant};name={principal.name};roles={','.join(sorted(principal.roles))}"


def decode_delegation(value: str) -> Principal:
    """The person a delegating workload acts for; :class:`UnauthenticatedError` if malformed."""
    fields: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, val = part.partition("=")
        if not sep:
            raise errors.UnauthenticatedError(
                f"{ON_BEHALF_OF} is malformed", reason=errors.Reason.ERROR_REASON_UNAUTHENTICATED
            )
        fields[key] = val
    roles = frozenset(r for r in fields.get("roles", "").split(",") if r)
    if not fields.get("name") or roles - ROLE_PERMISSIONS.keys():
        raise errors.UnauthenticatedError(
            f"{ON_BEHALF_OF} is malformed", reason=errors.Reason.ERROR_REASON_UNAUTHENTICATED
        )
    return Principal("user", fields["name"], fields.get("tenant", ""), roles, via="delegation")


LOCAL_ADMIN = Principal("user", "insecure-local", "default", frozenset({ADMIN}), via="insecure")
"""Every caller of a server started with ``--insecure`` (loopback only)."""
