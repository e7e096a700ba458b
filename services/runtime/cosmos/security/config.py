"""How a process proves who it is and whom it trusts: flags, environment and checks in one place.

Servers and clients take the same settings (each flag also an environment variable, see
:mod:`cosmos.runtime.config`): ``--tls-cert``/``--tls-key``/``--tls-ca`` (or ``--pki-dir`` and
``--pki-name`` for the files ``cosmos up`` and ``cosmos pki`` write), ``--token-public-key`` to accept
platform tokens, and ``--insecure`` for plaintext without authentication, which is refused on anything
but loopback.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from pathlib import Path

from cosmos import errors
from cosmos.runtime import config
from cosmos.security import tokens
from cosmos.security.tls import TlsFiles


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Security:
    """A process's credentials and trust."""

    tls: TlsFiles | None = None
    """Its certificate, key and the CA it trusts; None only when ``insecure``."""
    insecure: bool = False
    """Plaintext, no authentication: development on loopback only."""
    token_public_key: Path | None = None
    """Public key that platform tokens are checked against (servers that accept tokens)."""
    token: str = ""
    """A platform token this process presents (a client without a certificate)."""
    token_ca: Path | None = None
    """The CA a token client trusts for the servers' certificates (when it has no certificate)."""

    @property
    def ca(self) -> Path | None:
        """The CA bundle this process trusts."""
        return self.tls.ca if self.tls is not None else self.token_ca

    def check_listen(self, host: str, what: str) -> None:
        """Refuse to serve plaintext beyond loopback, or to serve without credentials at all."""
        if self.insecure:
            if not is_loopback(host):
                raise errors.ConfigError(
                    f"{what}: refusing to serve plaintext without authentication on {host}: --insecure is "
                    "for loopback development only; without it TLS and authentication are on"
                )
            return
        if self.tls is None:
            raise errors.ConfigError(
                f"{what}: no TLS credentials: give --tls-cert/--tls-key/--tls-ca (or --pki-dir and "
                "--pki-name; `cosmos pki` makes them), or --insecure on loopback for development"
            )

    def verifier(self) -> tokens.Verifier | None:
        """The token verifier, when tokens are accepted."""
        if self.token_public_key is None:
            return None
        return tokens.Verifier(tokens.load_public(self.token_public_key))


def add_arguments(parser: argparse.ArgumentParser, prefix: str, default_name: str) -> None:
    """The security flags of a server or client whose files are named ``default_name`` by default."""
    add = config.add_env_argument
    add(parser, prefix, "--pki-dir", default="", help="directory with ca.pem and <name>.pem/<name>-key.pem")
    add(parser, prefix, "--pki-name", default=default_name, help="file name of this workload's certificate")
    add(parser, prefix, "--tls-cert", default="", help="this workload's certificate (PEM)")
    add(parser, prefix, "--tls-key", default="", help="its private key (PEM)")
    add(parser, prefix, "--tls-ca", default="", help="CA bundle trusted for peers (PEM)")
    add(parser, prefix, "--token-public-key", default="", help="accept platform tokens signed by this key")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=config.env_flag(prefix, "--insecure"),
        help="plaintext, no authentication; loopback only, for development "
        f"(env {config.env_name(prefix, '--insecure')})",
    )


def from_args(args: argparse.Namespace) -> Security:
    """The :class:`Security` the flags describe."""
    tls: TlsFiles | None = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            raise errors.ConfigError("--tls-cert, --tls-key and --tls-ca go together")
        tls = TlsFiles(Path(args.tls_ca), Path(args.tls_cert), Path(args.tls_key))
    elif args.pki_dir:
        tls = TlsFiles.in_dir(Path(args.pki_dir), args.pki_name)
    public = Path(args.token_public_key) if args.token_public_key else None
    if public is None and args.pki_dir and (Path(args.pki_dir) / tokens.PUBLIC_KEY).exists():
        public = Path(args.pki_dir) / tokens.PUBLIC_KEY
    if args.insecure and tls is not None:
        raise errors.ConfigError("--insecure and TLS credentials exclude each other")
    token_ca = Path(args.tls_ca) if args.tls_ca and tls is None else None
    return Security(tls=tls, insecure=bool(args.insecure), token_public_key=public, token_ca=token_ca)
