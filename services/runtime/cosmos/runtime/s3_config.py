"""Where the S3 service is and how to sign for it (:class:`S3Config`): the standard AWS chain of
environment variables and shared files, and the variables that hand it to a child process."""

from __future__ import annotations

import configparser
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class S3Config:
    """Where the S3 service is and how to sign for it."""

    endpoint: str | None = None
    """``http(s)://host:port`` of an S3-compatible service; None: AWS itself."""
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Config:
        """The standard AWS chain: environment variables, then the shared config and credentials
        files for ``AWS_PROFILE`` (``default``)."""
        env = os.environ if environ is None else environ
        profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
        home = Path(env.get("HOME", str(Path.home())))
        creds = _ini(Path(env.get("AWS_SHARED_CREDENTIALS_FILE", home / ".aws" / "credentials")), profile)
        conf = _ini(
            Path(env.get("AWS_CONFIG_FILE", home / ".aws" / "config")),
            profile if profile == "default" else f"profile {profile}",
        )
        key = env.get("AWS_ACCESS_KEY_ID")
        if key:  # keys from the environment come as a set; never mix them with a file's
            secret, token = env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_SESSION_TOKEN")
        else:
            key = creds.get("aws_access_key_id") or conf.get("aws_access_key_id")
            secret = creds.get("aws_secret_access_key") or conf.get("aws_secret_access_key")
            token = creds.get("aws_session_token") or conf.get("aws_session_token")
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or conf.get("endpoint_url")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or conf.get("region") or "us-east-1"
        return cls(endpoint or None, region, key or None, secret or None, token or None)

    def env(self) -> dict[str, str]:
        """The environment variables that give a child process this configuration."""
        out = {"AWS_REGION": self.region}
        if self.endpoint:
            out["AWS_ENDPOINT_URL"] = self.endpoint
        if self.access_key_id:
            out["AWS_ACCESS_KEY_ID"] = self.access_key_id
        if self.secret_access_key:
            out["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        if self.session_token:
            out["AWS_SESSION_TOKEN"] = self.session_token
        return out


def _ini(path: Path, section: str) -> dict[str, str]:
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except (OSError, configparser.Error):
        return {}
    return dict(parser[section]) if parser.has_section(section) else {}
