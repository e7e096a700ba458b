"""``cosmos pki`` (the CA and workload certificates) and ``cosmos token create`` (platform tokens).

::

    cosmos pki init --dir pki                                   # a CA: pki/ca.pem, pki/ca-key.pem
    cosmos pki issue --dir pki --role plato --name plato-0 --dns plato.cosmos.svc
    cosmos pki issue --dir pki --role user --name alice --tenant acme --user-role submitter
    cosmos pki renew --dir pki                                  # re-issue what ends within 8 h
    cosmos pki show pki/alice.pem
    cosmos pki secrets-key --dir pki [--rotate]                 # pki/secrets.key: seals job secrets
    cosmos token create --tenant acme --role viewer --ttl 1h   # signed by <data-dir>/pki/token-key.pem
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cosmos import errors
from cosmos.runtime import process
from cosmos.security import pki, secrets, tokens

DEFAULT_DIR = ".cosmos/pki"


def _pki_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cosmos pki", description="The platform CA and workload certificates.")
    verbs = p.add_subparsers(dest="verb", required=True)
    init = verbs.add_parser("init", help="create a CA (ca.pem, ca-key.pem) unless one exists")
    init.add_argument("--dir", default=DEFAULT_DIR, help="directory of the CA")
    init.add_argument("--ttl", default="365d", help="CA lifetime (e.g. 365d)")
    issue = verbs.add_parser("issue", help="issue a certificate (and a new key) for one workload")
    issue.add_argument("--dir", default=DEFAULT_DIR, help="directory of the CA; output goes here too")
    issue.add_argument("--role", required=True, choices=pki.ROLES, help="workload role")
    issue.add_argument("--name", required=True, help="workload name (agent id, user name, instance)")
    issue.add_argument("--tenant", default="", help="a user's tenant")
    issue.add_argument("--user-role", action="append", default=[], help="a user's role (repeatable)")
    issue.add_argument("--dns", action="append", default=[], help="extra DNS name to serve under")
    issue.add_argument("--ip", action="append", default=[], help="extra IP address to serve under")
    issue.add_argument("--ttl", default="24h", help="lifetime (default 24h)")
    issue.add_argument("--out", default="", help="file name prefix (default: the name)")
    renew = verbs.add_parser("renew", help="re-issue every certificate in --dir that ends soon")
    renew.add_argument("--dir", default=DEFAULT_DIR, help="directory of the CA and certificates")
    renew.add_argument("--before", default="8h", help="renew what ends within this (default 8h)")
    renew.add_argument("--ttl", default="24h", help="lifetime of the new certificates")
    show = verbs.add_parser("show", help="print who a certificate names and until when")
    show.add_argument("file", help="a PEM certificate")
    key = verbs.add_parser("secrets-key", help="create (or rotate) the key file that seals job secrets")
    key.add_argument("--dir", default=DEFAULT_DIR, help="directory of secrets.key (Stratum's --pki-dir)")
    key.add_argument("--file", default="", help="the key file (default: <dir>/secrets.key)")
    key.add_argument("--rotate", action="store_true", help="add a new primary key, keep the old ones")
    return p


def pki_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos pki``."""
    args = _pki_parser().parse_args(argv)
    try:
        if args.verb == "init":
            directory = Path(args.dir)
            if pki.Paths.named(directory, "ca").cert.exists():
                print(f"CA exists: {directory / 'ca.pem'}")
                return process.EXIT_OK
            pki.Authority.create(directory, ttl=pki.parse_ttl(args.ttl))
            print(f"CA created: {directory / 'ca.pem'} (key {directory / 'ca-key.pem'}, 0600)")
        elif args.verb == "issue":
            directory = Path(args.dir)
            authority = pki.Authority.load(directory)
            subject = pki.Subject(
                role=args.role,
                name=args.name,
                tenant=args.tenant,
                user_roles=tuple(args.user_role),
                dns=tuple(args.dns),
                ips=tuple(args.ip),
            )
            if args.role == "user" and not (args.tenant and args.user_role):
                raise errors.ConfigError("a user certificate needs --tenant and at least one --user-role")
            paths = pki.Paths.named(directory, args.out or args.name)
            cert = authority.issue(paths, subject, ttl=pki.parse_ttl(args.ttl))
            until = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            print(f"{paths.cert}: {pki.spiffe_id(args.role, args.name)} until {until}")
        elif args.verb == "renew":
            directory = Path(args.dir)
            authority = pki.Authority.load(directory)
            before, ttl = pki.parse_ttl(args.before), pki.parse_ttl(args.ttl)
            for cert_path in sorted(directory.glob("*.pem")):
                if cert_path.name == "ca.pem" or cert_path.stem.endswith(("-key", ".pub")):
                    continue
                paths = pki.Paths(cert_path, cert_path.with_name(f"{cert_path.stem}-key.pem"))
                if pki.renew(authority, paths, ttl=ttl, before=before):
                    print(f"renewed {cert_path}")
        elif args.verb == "secrets-key":
            path = Path(args.file) if args.file else Path(args.dir) / secrets.KEY_FILE
            if args.rotate:
                key_id = secrets.rotate_key_file(path)
                print(f"{path}: new primary key {key_id}; restart Stratum, drop old lines once unused")
            else:
                key_id = secrets.create_key_file(path)
                print(f"{path}: created key {key_id} (0600)")
        else:
            cert = pki.load_cert(Path(args.file))
            subject = pki.subject_of(cert)
            print(f"identity: {pki.spiffe_id(subject.role, subject.name)}")
            if subject.tenant or subject.user_roles:
                print(f"tenant: {subject.tenant}  roles: {', '.join(subject.user_roles)}")
            print(
                f"valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC ({pki.remaining(cert)} left)"
            )
    except errors.ConfigError as exc:
        print(f"cosmos pki: {exc}", file=sys.stderr)
        return process.EXIT_CONFIG
    return process.EXIT_OK


def token_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cosmos token``."""
    p = argparse.ArgumentParser(prog="cosmos token", description="Platform tokens for people and programs.")
    verbs = p.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="print a new signed token")
    create.add_argument("--tenant", required=True, help="the tenant it acts in")
    create.add_argument(
        "--role", action="append", required=True, help="viewer, submitter, operator, admin, worker"
    )
    create.add_argument("--ttl", default="1h", help="lifetime (default 1h)")
    create.add_argument("--subject", default="", help="who it is for (default: token-<tenant>)")
    create.add_argument(
        "--key", default=f"{DEFAULT_DIR}/{tokens.PRIVATE_KEY}", help="the platform's signing key"
    )
    args = p.parse_args(argv)
    try:
        token = tokens.create(
            tokens.load_private(Path(args.key)),
            subject=args.subject or f"token-{args.tenant}",
            tenant=args.tenant,
            roles=args.role,
            ttl=pki.parse_ttl(args.ttl),
        )
    except errors.ConfigError as exc:
        print(f"cosmos token: {exc}", file=sys.stderr)
        return process.EXIT_CONFIG
    print(token)
    return process.EXIT_OK
