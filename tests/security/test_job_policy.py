"""The job policy file: which executables and images each tenant's jobs may use."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cosmos import errors
from cosmos.security.job_policy import JobPolicy
from cosmos.stratum.v1 import job_pb2

pytestmark = pytest.mark.unit

POLICY = """
tenants:
  acme: {executables: [python3, /usr/bin/*], images: [registry.example.com/media/*]}
  media: {images: []}
  "*": {executables: [python3]}
"""


def spec(tenant: str, argv0: str, image: str = "") -> job_pb2.JobSpec:
    return job_pb2.JobSpec(argv=[argv0, "-c", "pass"], tenant=tenant, image=image)


def refused(policy: JobPolicy, job: job_pb2.JobSpec) -> list[str]:
    try:
        policy.check(job)
    except errors.PermissionDeniedError as exc:
        assert exc.code == grpc.StatusCode.PERMISSION_DENIED
        assert exc.reason == "ERROR_REASON_FORBIDDEN_EXECUTABLE"
        return [v.field for v in exc.violations]
    return []


def test_names_match_exactly_paths_by_glob_and_other_tenants_get_the_default(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    policy = JobPolicy.load(path)
    assert refused(policy, spec("acme", "python3")) == []
    assert refused(policy, spec("acme", "/usr/bin/ffmpeg")) == []
    assert refused(policy, spec("acme", "/usr/bin/../../bin/sh")) == ["spec.argv[0]"]  # normalized first
    assert refused(policy, spec("acme", "/usr/local/bin/python3")) == ["spec.argv[0]"]
    assert refused(policy, spec("acme", "sh")) == ["spec.argv[0]"]
    assert refused(policy, spec("acme", "python3", "registry.example.com/media/ffmpeg:7")) == []
    assert refused(policy, spec("acme", "sh", "docker.io/alpine")) == ["spec.argv[0]", "spec.image"]
    # An omitted key allows anything; an empty list nothing.
    assert refused(policy, spec("media", "/bin/anything")) == []
    assert refused(policy, spec("media", "ffmpeg", "alpine")) == ["spec.image"]
    # Tenants without an entry get "*"'s (an empty tenant is "default").
    assert refused(policy, spec("globex", "python3")) == []
    assert refused(policy, spec("", "bash")) == ["spec.argv[0]"]


def test_without_a_default_entry_unlisted_tenants_may_run_nothing() -> None:
    policy = JobPolicy.parse({"tenants": {"acme": {}}})
    assert refused(policy, spec("acme", "bash")) == []
    assert refused(policy, spec("globex", "python3")) == ["spec.argv[0]"]


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"tenants": []},
        {"tenants": {"acme": {"binaries": ["x"]}}},
        {"tenants": {"acme": {"images": "x"}}},
    ],
)
def test_a_malformed_policy_is_a_configuration_error(data: object) -> None:
    with pytest.raises(errors.ConfigError):
        JobPolicy.parse(data)
