"""Authenticating every call, authorizing it against its RPC's declared permission, auditing changes.

:class:`AuthInterceptor` runs before any handler. It finds the caller (:class:`Principal`) from the
verified client certificate of the connection (parsed once per certificate, then cached), or from a
bearer token on a token listener, or, behind a delegating workload, from the principal that workload
names. It checks the permission the RPC declares in its ``(cosmos.common.v1.access)`` option, makes the
principal available to the handler (:func:`current`), and writes one audit line per mutating call.

Refusals: no or bad credentials → ``UNAUTHENTICATED`` with the reason; too little role →
``PERMISSION_DENIED`` naming the permission.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from opentelemetry import trace

from cosmos import errors
from cosmos.common.v1 import access_pb2
from cosmos.runtime import handlers, rpc_errors
from cosmos.security import pki, principals, tokens
from cosmos.security.principals import Principal

log = logging.getLogger(__name__)
audit_log = logging.getLogger("cosmos.audit")

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Any authenticated caller may use health and reflection (probes use the health-only listener)."""
AUTHORIZATION = "authorization"
_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("cosmos_principal", default=None)


def current() -> Principal:
    """The caller of the RPC being handled (the local admin outside of any RPC, e.g. in tests)."""
    principal = _current.get()
    return principal if principal is not None else principals.LOCAL_ADMIN


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """Run in-process handler calls as ``principal``: what the interceptor does for an RPC, for a
    caller proven another way (Optimus's webhook: an HMAC-signed request acting as its configured
    identity). The caller must already have checked the principal may do what it is about to do."""
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)


def access_rules(service_names: Iterable[str]) -> dict[str, access_pb2.Access]:
    """``/<service>/<method>`` → its access rule, for every method of ``service_names``.

    A method without the option stops the server from starting: nothing is served unprotected.
    """
    pool = descriptor_pool.Default()
    rules: dict[str, access_pb2.Access] = {}
    for name in service_names:
        service = pool.FindServiceByName(name)
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(access_pb2.access):
                raise errors.ConfigError(f"{name}.{method.name} declares no (cosmos.common.v1.access) rule")
            rules[f"/{name}/{method.name}"] = options.Extensions[access_pb2.access]
    return rules


class Authenticator:
    """Turns a connection's certificate, a bearer token or a delegation into a :class:`Principal`."""

    def __init__(self, *, insecure: bool = False, verifier: tokens.Verifier | None = None) -> None:
        self.insecure = insecure
        self.verifier = verifier
        self._certs: OrderedDict[bytes, Principal] = OrderedDict()

    def principal(self, context: Any) -> Principal:
        """Who is calling; :class:`UnauthenticatedError` saying why when nobody is proven."""
        metadata = _metadata(context)
        if self.insecure:
            caller = principals.LOCAL_ADMIN
        else:
            auth = context.auth_context()
            pem = (auth.get("x509_pem_cert") or [None])[0]
            if pem is not None:
                caller = self._from_certificate(pem)
            else:
                caller = self._from_token(metadata.get(AUTHORIZATION, ""))
        delegated = metadata.get(principals.ON_BEHALF_OF)
        if delegated is None:
            return caller
        if caller.kind not in principals.DELEGATES and not self.insecure:
            raise errors.PermissionDeniedError(
                f"{caller.identity} may not act for another caller",
                reason=errors.Reason.ERROR_REASON_PERMISSION_DENIED,
                metadata={"identity": caller.identity},
            )
        return principals.decode_delegation(delegated)

    def _from_certificate(self, pem: bytes) -> Principal:
        # One parse per certificate: every call of a connection presents the same one.
        found = self._certs.get(pem)
        if found is not None:
            return found
        from cryptography import x509

        try:
            subject = pki.subject_of(x509.load_pem_x509_certificate(pem))
        except (ValueError, errors.ConfigError) as exc:
            raise errors.UnauthenticatedError(
                f"the client certificate names no Cosmos identity: {exc}",
                reason=errors.Reason.ERROR_REASON_UNAUTHENTICATED,
            ) from exc
        if subject.role == "user":
            roles = frozenset(r for r in subject.user_roles if r in principals.ROLE_PERMISSIONS)
            found = Principal("user", subject.name, subject.tenant, roles)
        else:
            found = Principal(subject.role, subject.name)
        self._certs[pem] = found
        if len(self._certs) > 1024:
            self._certs.popitem(last=False)
        return found

    def _from_token(self, header: str) -> Principal:
        if not header:
            raise errors.UnauthenticatedError(
                "no credentials: present a client certificate (mutual TLS) or a bearer token",
                reason=errors.Reason.ERROR_REASON_UNAUTHENTICATED,
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.UnauthenticatedError(
                "the authorization header must be 'Bearer <token>'",
                reason=errors.Reason.ERROR_REASON_UNAUTHENTICATED,
            )
        if self.verifier is None:
            raise errors.UnauthenticatedError(
                "this server accepts no tokens (no --token-public-key)",
                reason=errors.Reason.ERROR_REASON_UNAUTHENTICATED,
            )
        return self.verifier.verify(token.strip())


def _metadata(context: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key] = value
    return out


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # grpc-stubs lags grpcio
    """Authenticates, authorizes and audits every call of a server."""

    def __init__(self, rules: Mapping[str, access_pb2.Access], authenticator: Authenticator) -> None:
        self.rules = dict(rules)
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        rule = self.rules.get(method)
        if rule is None and not method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)  # not ours: gRPC answers UNIMPLEMENTED
        return handlers.wrap(
            await continuation(handler_call_details),
            lambda fn: self._unary(fn, method, rule),
            lambda fn: self._stream(fn, method, rule),
        )

    def _admit(self, context: Any, rule: access_pb2.Access | None) -> Principal | None:
        if rule is not None and rule.anonymous:
            try:
                return self.authenticator.principal(context)
            except errors.RpcError:
                return None
        principal = self.authenticator.principal(context)
        # --insecure (loopback development) authorizes nothing: every caller may do everything.
        if rule is not None and not self.authenticator.insecure:
            principal.require(rule.permission)
        return principal

    def _unary(
        self, fn: Callable[..., Any], method: str, rule: access_pb2.Access | None
    ) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Any) -> Any:
            try:
                principal = self._admit(context, rule)
            except errors.RpcError as exc:
                self._refuse(method, rule, request, exc)
                await context.abort_with_status(rpc_errors.to_status(exc))
                return None
            token = _current.set(principal)
            response = None
            try:
                result = fn(request, context)
                response = await result if isinstance(result, Awaitable) else result
                return response
            finally:
                if rule is not None and rule.audited:
                    _audit(principal, method, request, response, context)
                _current.reset(token)

        return call

    def _stream(
        self, fn: Callable[..., Any], method: str, rule: access_pb2.Access | None
    ) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                principal = self._admit(context, rule)
            except errors.RpcError as exc:
                self._refuse(method, rule, request, exc)
                await context.abort_with_status(rpc_errors.to_status(exc))
                return
            _current.set(principal)  # this generator runs in its own context: nothing to undo
            async for item in handlers.items(fn(request, context)):
                yield item

        return call

    def _refuse(
        self, method: str, rule: access_pb2.Access | None, request: Any, exc: errors.RpcError
    ) -> None:
        """Log a refused call; a refused mutating call is an audit line too (who was refused is told by
        the identity in the error's metadata, when the caller was known)."""
        log.warning(
            "call refused",
            extra={
                "fields": {"method": method, "code": exc.code.name, "reason": exc.reason, "why": exc.message}
            },
        )
        if rule is not None and rule.audited:
            identity = exc.metadata.get("identity", "anonymous")
            _write_audit(identity, "", "", method, _resource(request, None), exc.code.name)


_ID_FIELDS = ("token_id", "encode_id", "workflow_id", "job_id", "agent_id", "definition_id")


def _resource(request: Any, response: Any) -> str:
    """The id a mutating call acted on: the response's resource (what was created or changed), else
    the id the request named."""
    for message in (response, request):
        if not isinstance(message, Message):
            continue
        for name in _ID_FIELDS:
            if name in message.DESCRIPTOR.fields_by_name:
                value = getattr(message, name)
                if value:
                    return str(value)
        for field in message.DESCRIPTOR.fields:
            if field.message_type is not None and not _repeated(field):
                inner = getattr(message, field.name)
                for name in _ID_FIELDS:
                    if name in inner.DESCRIPTOR.fields_by_name and getattr(inner, name):
                        return str(getattr(inner, name))
    return ""


def _repeated(field: Any) -> bool:
    return bool(field.is_repeated)


def _audit(principal: Principal | None, method: str, request: Any, response: Any, context: Any) -> None:
    code = grpc.StatusCode.OK if response is not None else None
    try:
        reported = context.code()
    except (AttributeError, NotImplementedError):
        reported = None
    if reported is not None:
        code = reported if isinstance(reported, grpc.StatusCode) else rpc_errors.status_code(int(reported))
    name = code.name if code is not None else "UNKNOWN"
    _write_audit(
        principal.identity if principal else "anonymous",
        principal.tenant if principal else "",
        principal.via if principal else "",
        method,
        _resource(request, response),
        name,
    )


def write_audit(identity: str, tenant: str, via: str, method: str, resource: str, code: str) -> None:
    """One audit line (and span attributes), for calls that do not pass the gRPC interceptor."""
    _write_audit(identity, tenant, via, method, resource, code)


def _write_audit(identity: str, tenant: str, via: str, method: str, resource: str, code: str) -> None:
    fields = {"identity": identity, "tenant": tenant, "via": via, "method": method, "resource": resource,
              "code": code}  # fmt: skip
    audit_log.info("audit", extra={"fields": fields})
    span = trace.get_current_span()
    if span.is_recording():
        for key, value in fields.items():
            span.set_attribute(f"cosmos.audit.{key}", value)
