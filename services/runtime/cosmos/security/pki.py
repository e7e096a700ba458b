"""The platform's certificate authority: a CA, and short-lived certificates naming one workload each.

Every workload's certificate carries its identity as a SPIFFE-style URI SAN,
``spiffe://cosmos/<role>/<name>`` (role: optimus, plato, stratum, agent, console, user). A server's
certificate also names its role as a DNS name, ``<role>.cosmos``: gRPC Python cannot show a client the
server's URI SAN, so clients check the role by asking for that name (see :mod:`cosmos.security.tls`).
A user's certificate carries its tenant in the subject's O and its roles in OU values.

Keys are EC P-256 (fast handshakes), written 0600. Nothing here talks to the network: external CAs
(cert-manager, Vault) work by writing the same files.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cosmos import errors
from cosmos.runtime import wellknown

TRUST_DOMAIN = "cosmos"
ROLES = ("optimus", "plato", "stratum", "agent", "console", "user")
"""Workload roles a certificate can name."""
SERVER_ROLES = ("optimus", "plato", "stratum", "console", "nats")
"""Roles whose certificates also serve (they get ``<role>.cosmos`` and loopback names)."""
DEFAULT_TTL = datetime.timedelta(hours=24)
CA_TTL = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(hours=8)
"""A certificate this close to its end is renewed."""


def spiffe_id(role: str, name: str) -> str:
    """``spiffe://cosmos/<role>/<name>``."""
    return f"spiffe://{TRUST_DOMAIN}/{role}/{name}"


def server_name(role: str) -> str:
    """The DNS name a server of ``role`` is checked against by its clients."""
    return f"{role}.{TRUST_DOMAIN}"


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where one certificate and its key live."""

    cert: Path
    """PEM certificate (the leaf; the CA is separate)."""
    key: Path
    """PEM private key, mode 0600."""

    @classmethod
    def named(cls, directory: Path, name: str) -> Paths:
        """``<dir>/<name>.pem`` and ``<dir>/<name>-key.pem``."""
        return cls(directory / f"{name}.pem", directory / f"{name}-key.pem")


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` atomically with ``mode`` (a reader never sees half a key or a wrong mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """A private key as PEM (PKCS#8), readable by its owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_file(path, pem, 0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    """A certificate as PEM (public)."""
    write_file(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def load_cert(path: Path) -> x509.Certificate:
    """A PEM certificate; :class:`ConfigError` naming the file when it is missing or malformed."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise errors.ConfigError(f"{path}: not a readable PEM certificate ({exc})") from exc


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A PEM EC private key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise errors.ConfigError(f"{path}: not a readable PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise errors.ConfigError(f"{path}: expected an EC private key")
    return key


@dataclasses.dataclass(frozen=True)
class Subject:
    """Who a certificate is for."""

    role: str
    """One of :data:`ROLES`."""
    name: str
    """The workload's name (agent id, user name, service instance)."""
    tenant: str = ""
    """A user's tenant (subject O)."""
    user_roles: tuple[str, ...] = ()
    """A user's roles (subject OU values): viewer, submitter, operator, admin, worker."""
    dns: tuple[str, ...] = ()
    """Extra DNS names to serve under."""
    ips: tuple[str, ...] = ()
    """Extra IP addresses to serve under."""


class Authority:
    """A CA certificate and its key: issues and renews workload certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(
        cls, directory: Path, *, ttl: datetime.timedelta = CA_TTL, name: str = "Cosmos CA"
    ) -> Authority:
        """A new CA written to ``<dir>/ca.pem`` and ``<dir>/ca-key.pem``."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = wellknown.utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        paths = Paths.named(directory, "ca")
        write_key(paths.key, key)
        write_cert(paths.cert, cert)
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> Authority:
        """The CA in ``<dir>/ca.pem`` + ``<dir>/ca-key.pem``."""
        paths = Paths.named(directory, "ca")
        return cls(load_cert(paths.cert), load_key(paths.key))

    @classmethod
    def ensure(cls, directory: Path) -> Authority:
        """The CA in ``directory``, created on first use."""
        if Paths.named(directory, "ca").cert.exists():
            return cls.load(directory)
        return cls.create(directory)

    def sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        subject: Subject,
        *,
        ttl: datetime.timedelta = DEFAULT_TTL,
    ) -> x509.Certificate:
        """A certificate for ``public_key`` naming ``subject``, valid for ``ttl`` (never past the CA)."""
        if subject.role not in (*ROLES, "nats"):
            raise errors.ConfigError(f"role {subject.role!r}: expected one of {', '.join(ROLES)}")
        check_name(subject.name)
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, subject.name)]
        if subject.tenant:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject.tenant))
        attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, r) for r in subject.user_roles]
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id(subject.role, subject.name))]
        dns = list(subject.dns)
        ips = list(subject.ips)
        if subject.role in SERVER_ROLES:
            dns = [server_name(subject.role), "localhost", *dns]
            ips = ["127.0.0.1", "::1", *ips]
        sans += [x509.DNSName(d) for d in dict.fromkeys(dns)]
        try:
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
        except ValueError as exc:
            raise errors.ConfigError(f"not an IP address: {exc}") from exc
        now = wellknown.utcnow()
        end = min(now + ttl, self.cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, paths: Paths, subject: Subject, *, ttl: datetime.timedelta = DEFAULT_TTL
    ) -> x509.Certificate:
        """A new key and certificate for ``subject``, written to ``paths`` (key first, 0600)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.sign(key.public_key(), subject, ttl=ttl)
        write_key(paths.key, key)
        write_cert(paths.cert, cert)
        return cert


def check_name(name: str) -> None:
    """:class:`ConfigError` unless ``name`` is a valid workload name (agent id, user name)."""
    if not name or len(name) > 128 or not all(c.isalnum() or c in "-_." for c in name):
        raise errors.ConfigError(f"name {name!r}: letters, digits, '-', '_' and '.' only (1-128)")


def subject_of(cert: x509.Certificate) -> Subject:
    """The :class:`Subject` a certificate names (its SPIFFE id, tenant, roles and names)."""
    uri = ""
    dns: list[str] = []
    ips: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        uri = next((u for u in uris if u.startswith(f"spiffe://{TRUST_DOMAIN}/")), "")
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    parts = uri.removeprefix(f"spiffe://{TRUST_DOMAIN}/").split("/")
    if len(parts) != 2 or not all(parts):
        raise errors.ConfigError(
            f"certificate {cert.subject.rfc4514_string()} has no {TRUST_DOMAIN} SPIFFE id"
        )
    role, name = parts
    tenant = next((str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)), "")
    roles = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))
    implicit_dns = {server_name(role), "localhost"}
    implicit_ips = {"127.0.0.1", "::1"}
    return Subject(
        role=role,
        name=name,
        tenant=tenant,
        user_roles=roles,
        dns=tuple(d for d in dns if d not in implicit_dns),
        ips=tuple(i for i in ips if i not in implicit_ips),
    )


def remaining(cert: x509.Certificate) -> datetime.timedelta:
    """Time left before ``cert`` expires (negative once it has)."""
    return cert.not_valid_after_utc - wellknown.utcnow()


def needs_renewal(paths: Paths, before: datetime.timedelta = RENEW_BEFORE) -> bool:
    """Whether the certificate at ``paths`` is missing, unreadable or ends within ``before``."""
    if not paths.cert.exists() or not paths.key.exists():
        return True
    try:
        return remaining(load_cert(paths.cert)) < before
    except errors.ConfigError:
        return True


def renew(
    authority: Authority,
    paths: Paths,
    *,
    ttl: datetime.timedelta = DEFAULT_TTL,
    before: datetime.timedelta = RENEW_BEFORE,
) -> bool:
    """Re-issue the certificate at ``paths`` (same subject, new key) if it ends within ``before``."""
    if not needs_renewal(paths, before):
        return False
    authority.issue(paths, subject_of(load_cert(paths.cert)), ttl=ttl)
    return True


def ensure(
    authority: Authority,
    paths: Paths,
    subject: Subject,
    *,
    ttl: datetime.timedelta = DEFAULT_TTL,
    before: datetime.timedelta = RENEW_BEFORE,
) -> None:
    """A certificate for ``subject`` at ``paths``, issued when missing, for another subject or near its
    end."""
    if not needs_renewal(paths, before):
        try:
            if subject_of(load_cert(paths.cert)) == subject:
                return
        except errors.ConfigError:
            pass
    authority.issue(paths, subject, ttl=ttl)


def parse_ttl(text: str) -> datetime.timedelta:
    """``90s``, ``30m``, ``24h``, ``7d`` as a duration."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    unit = text[-1:].lower()
    try:
        seconds = float(text[:-1]) * units[unit] if unit in units else float(text)
    except ValueError as exc:
        raise errors.ConfigError(f"{text!r} is not a duration (e.g. 90s, 30m, 24h, 7d)") from exc
    if seconds <= 0:
        raise errors.ConfigError(f"{text!r}: a duration must be positive")
    return datetime.timedelta(seconds=seconds)


def issue_all(
    authority: Authority, directory: Path, subjects: Sequence[tuple[str, Subject]], ttl: datetime.timedelta
) -> None:
    """Ensure one certificate per ``(file name, subject)`` under ``directory``."""
    for name, subject in subjects:
        ensure(authority, Paths.named(directory, name), subject, ttl=ttl)
