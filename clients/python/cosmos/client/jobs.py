"""The seed card's job builder: an immutable, validated description of one Stratum job.

>>> job = (
...     Job.builder()
...     .command("ffmpeg", "-i", "in.mov")
...     .args("-c:v", "libx264", "-crf", "23", "out.mp4")
...     .gpu(1, "A100")
...     .cpu(8)
...     .memory("16Gi")
...     .input("file:///data/default/in.mov")
...     .output("file:///data/default/out/out.mp4")
...     .timeout(timedelta(minutes=45))
...     .build()
... )
>>> job.to_spec()  # the cosmos.stratum.v1.JobSpec it stands for

The builder collects; :meth:`JobBuilder.build` checks everything at once and raises one
:class:`~cosmos.client.errors.InvalidJobError` naming every offending field by its JobSpec path (the
same paths Stratum's own ``BadRequest`` violations use), so a mistake is caught before the network.
Stratum validates again: the builder is a convenience, not the authority.
"""

from __future__ import annotations

import dataclasses
import math
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Literal
from urllib.parse import unquote, urlsplit

from cosmos.client.errors import InvalidJobError
from cosmos.errors import FieldViolation
from cosmos.stratum.v1 import job_pb2

_UNITS = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kMGT]i?|Ki)?\s*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROGRESS = {
    "none": job_pb2.PROGRESS_FORMAT_NONE,
    "ffmpeg": job_pb2.PROGRESS_FORMAT_FFMPEG,
    "channel": job_pb2.PROGRESS_FORMAT_CHANNEL,
}
ProgressFormat = Literal["none", "ffmpeg", "channel"]
_Bad = Callable[[str, str], None]
"""How ``build`` collects a problem: the JobSpec field path and what is wrong."""


def parse_memory(text: str | int) -> int:
    """Bytes of a Kubernetes-style quantity: ``"16Gi"``, ``"512Mi"``, ``"1.5G"``, ``"1048576"``.

    Raises ValueError for anything else (a negative number, an unknown suffix such as ``"16GB"``)."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a memory quantity")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text} is negative")
        return text
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a memory quantity (e.g. 512Mi, 16Gi, 2G or a number of bytes)")
    number, unit = match.group(1), match.group(2) or ""
    return int(float(number) * _UNITS[unit])


def _artifact_path(uri: str) -> str:
    """The default work-directory name of an artifact: the URI's last path segment."""
    return posixpath.basename(unquote(urlsplit(uri).path).rstrip("/"))


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A file the agent downloads before the job starts (input) or uploads after it succeeds (output)."""

    uri: str
    """Where it lives: ``file://``, ``s3://``, ``http(s)://``."""
    path: str
    """Its name in the job's work directory (relative, no ``..``)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One Stratum job, validated and immutable; :meth:`to_spec` is the ``JobSpec`` sent to Stratum.

    Build one with :meth:`builder`; :func:`dataclasses.replace` derives a variant (it is not validated
    again: prefer the builder)."""

    argv: tuple[str, ...]
    """Program and arguments, run directly (never through a shell)."""
    image: str = ""
    """Container image; empty: a host process."""
    runtime: str = ""
    """``process`` or a container runtime; empty: Stratum's choice from ``image``."""
    env: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    """Extra environment variables."""
    secrets: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}), repr=False)
    """Secret environment variables (encrypted at rest by Stratum, never shown back); not in repr."""
    inputs: tuple[Artifact, ...] = ()
    outputs: tuple[Artifact, ...] = ()
    cpu_millis: int = 0
    """Thousandths of a core; 0: Stratum's default."""
    memory_bytes: int = 0
    """0: Stratum's default."""
    gpu_count: int = 0
    gpu_share: float = 0.0
    gpu_models: tuple[str, ...] = ()
    """Acceptable GPU models, any of them; empty: any."""
    timeout: timedelta | None = None
    priority: int = 0
    tenant: str = ""
    labels: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    idempotency_key: str = ""
    progress_format: ProgressFormat | None = None
    media_duration: timedelta | None = None
    display_name: str = ""

    @staticmethod
    def builder() -> JobBuilder:
        """A new, empty builder."""
        return JobBuilder()

    def to_spec(self) -> job_pb2.JobSpec:
        """The ``cosmos.stratum.v1.JobSpec`` this job stands for."""
        spec = job_pb2.JobSpec(
            argv=list(self.argv),
            image=self.image,
            runtime=self.runtime,
            env=dict(self.env),
            secrets=dict(self.secrets),
            inputs=[job_pb2.Artifact(uri=a.uri, path=a.path) for a in self.inputs],
            outputs=[job_pb2.Artifact(uri=a.uri, path=a.path) for a in self.outputs],
            priority=self.priority,
            tenant=self.tenant,
            labels=dict(self.labels),
            idempotency_key=self.idempotency_key,
            display_name=self.display_name,
        )
        spec.resources.cpu_millis = self.cpu_millis
        spec.resources.memory_bytes = self.memory_bytes
        if self.gpu_count or self.gpu_share:
            spec.resources.gpu.count = self.gpu_count
            spec.resources.gpu.share = self.gpu_share
            spec.resources.gpu.models.extend(self.gpu_models)
        if self.timeout is not None:
            spec.timeout.FromTimedelta(self.timeout)
        if self.progress_format is not None:
            spec.progress_format = _PROGRESS[self.progress_format]
        if self.media_duration is not None:
            spec.media_duration.FromTimedelta(self.media_duration)
        return spec


class JobBuilder:
    """Fluent, order-free setters for a :class:`Job`; nothing is checked before :meth:`build`.

    Every setter returns the builder. ``command`` sets the program (and its first arguments),
    ``args`` appends arguments: the card's ``.args([...])`` after ``.image(...)`` adds to the
    command, so a container job names its entrypoint with ``command`` too (Stratum runs argv, never
    an image's default entrypoint)."""

    def __init__(self) -> None:
        self._command: list[str] = []
        self._args: list[str] = []
        self._image = ""
        self._runtime = ""
        self._env: dict[str, str] = {}
        self._secrets: dict[str, str] = {}
        self._inputs: list[tuple[str, str | None]] = []
        self._outputs: list[tuple[str, str | None]] = []
        self._cpu: float | None = None
        self._memory: str | int | None = None
        self._gpu_count = 0
        self._gpu_share = 0.0
        self._gpu_models: list[str] = []
        self._timeout: timedelta | float | None = None
        self._priority = 0
        self._tenant = ""
        self._labels: dict[str, str] = {}
        self._idempotency_key = ""
        self._progress: str | None = None
        self._media_duration: timedelta | float | None = None
        self._display_name = ""

    def command(self, program: str, *args: str) -> JobBuilder:
        """The program to run (a path or a name the agent's allow-list accepts) and its first args."""
        self._command = [program, *args]
        return self

    def args(self, *args: str | Iterable[str]) -> JobBuilder:
        """Append arguments: ``args("-crf", "30")`` or, as in the card, ``args(["-crf", "30"])``."""
        for arg in args:
            if isinstance(arg, str):
                self._args.append(arg)
            else:
                self._args.extend(arg)
        return self

    def image(self, image: str, *, runtime: str = "") -> JobBuilder:
        """Run in this container image (``runtime``: a specific container runtime)."""
        self._image, self._runtime = image, runtime
        return self

    def runtime(self, runtime: str) -> JobBuilder:
        """Run in this runtime (``process``, or a container runtime an agent advertises)."""
        self._runtime = runtime
        return self

    def gpu(self, count: int, *models: str) -> JobBuilder:
        """``count`` whole GPUs of any of ``models`` (``gpu(1, "A100")``, ``gpu(2, "A100|H100")``)."""
        self._gpu_count = count
        self._gpu_models = [m for model in models for m in model.split("|") if m]
        return self

    def gpu_share(self, share: float, *models: str) -> JobBuilder:
        """A fraction in (0, 1] of one GPU, shared with other jobs."""
        self._gpu_share = share
        self._gpu_models = [m for model in models for m in model.split("|") if m]
        return self

    def cpu(self, cores: float) -> JobBuilder:
        """CPU cores (``cpu(8)``, ``cpu(0.5)``), reserved in thousandths of a core."""
        self._cpu = cores
        return self

    def memory(self, quantity: str | int) -> JobBuilder:
        """Memory: ``"16Gi"``, ``"512Mi"``, ``"2G"`` or a number of bytes."""
        self._memory = quantity
        return self

    def input(self, uri: str, path: str | None = None) -> JobBuilder:
        """Download ``uri`` into the work directory as ``path`` (default: the URI's file name)."""
        self._inputs.append((uri, path))
        return self

    def output(self, uri: str, path: str | None = None) -> JobBuilder:
        """Upload ``path`` (default: the URI's file name) from the work directory to ``uri`` on success."""
        self._outputs.append((uri, path))
        return self

    def env(self, name: str | Mapping[str, str], value: str | None = None) -> JobBuilder:
        """An environment variable, or a mapping of them."""
        self._env.update({name: value or ""} if isinstance(name, str) else name)
        return self

    def secret(self, name: str, value: str) -> JobBuilder:
        """A secret environment variable: encrypted at rest, never returned, never logged."""
        self._secrets[name] = value
        return self

    def timeout(self, limit: timedelta | float) -> JobBuilder:
        """Longest run of one attempt (a timedelta or seconds); the job then ends TIMED_OUT."""
        self._timeout = limit
        return self

    def priority(self, priority: int) -> JobBuilder:
        """Higher runs first; 0 is normal."""
        self._priority = priority
        return self

    def tenant(self, tenant: str) -> JobBuilder:
        """Tenant to account the job to (only an admin may name another than its own)."""
        self._tenant = tenant
        return self

    def label(self, name: str, value: str) -> JobBuilder:
        """A free-form label for filtering and display."""
        self._labels[name] = value
        return self

    def idempotency_key(self, key: str) -> JobBuilder:
        """Jobs submitted with the same key are one job (across request ids)."""
        self._idempotency_key = key
        return self

    def progress(self, fmt: ProgressFormat, media_duration: timedelta | float | None = None) -> JobBuilder:
        """How the agent reads progress: ``ffmpeg`` (``-progress``; ``media_duration`` gives percent
        and ETA) or ``channel`` (JSON lines on the agent's progress channel)."""
        self._progress, self._media_duration = fmt, media_duration
        return self

    def display_name(self, name: str) -> JobBuilder:
        """A short name for tables and traces."""
        self._display_name = name
        return self

    def build(self) -> Job:
        """The :class:`Job`, or :class:`InvalidJobError` listing every problem found."""
        problems: list[FieldViolation] = []

        def bad(field: str, why: str) -> None:
            problems.append(FieldViolation(field, why))

        argv = (*self._command, *self._args)
        if not argv:
            bad("spec.argv", "no command: call .command(program, ...) or .args(...)")
        elif not argv[0]:
            bad("spec.argv[0]", "the program is empty")
        cpu_millis = 0
        if self._cpu is not None:
            if not math.isfinite(self._cpu) or self._cpu <= 0:
                bad("spec.resources.cpu_millis", f"cpu({self._cpu!r}): cores must be a positive number")
            else:
                cpu_millis = max(1, round(self._cpu * 1000))
        memory_bytes = 0
        if self._memory is not None:
            try:
                memory_bytes = parse_memory(self._memory)
            except ValueError as exc:
                bad("spec.resources.memory_bytes", f"memory: {exc}")
        if self._gpu_count < 0:
            bad("spec.resources.gpu.count", f"gpu({self._gpu_count}): the count must not be negative")
        if not (0 <= self._gpu_share <= 1) or not math.isfinite(self._gpu_share):
            bad("spec.resources.gpu.share", f"gpu_share({self._gpu_share}): must be in (0, 1]")
        if self._gpu_count and self._gpu_share:
            bad("spec.resources.gpu", "gpu(count) and gpu_share(share) exclude each other")
        if self._gpu_models and not (self._gpu_count or self._gpu_share):
            bad("spec.resources.gpu.models", "GPU models given for no GPU (count 0)")
        timeout = _duration(self._timeout, "spec.timeout", bad)
        media_duration = _duration(self._media_duration, "spec.media_duration", bad)
        if self._progress is not None and self._progress not in _PROGRESS:
            bad("spec.progress_format", f"{self._progress!r}: one of {', '.join(_PROGRESS)}")
        for kind, values in (("env", self._env), ("secrets", self._secrets)):
            for name in values:
                if not _ENV_NAME.match(name):
                    bad(f"spec.{kind}[{name!r}]", "not an environment variable name")
        clash = sorted(set(self._env) & set(self._secrets))
        if clash:
            bad("spec.secrets", f"{', '.join(clash)}: both an env variable and a secret")
        inputs = self._artifacts(self._inputs, "spec.inputs", bad)
        outputs = self._artifacts(self._outputs, "spec.outputs", bad)
        if problems:
            raise InvalidJobError(problems)
        return Job(
            argv=argv,
            image=self._image,
            runtime=self._runtime,
            env=MappingProxyType(dict(self._env)),
            secrets=MappingProxyType(dict(self._secrets)),
            inputs=inputs,
            outputs=outputs,
            cpu_millis=cpu_millis,
            memory_bytes=memory_bytes,
            gpu_count=self._gpu_count,
            gpu_share=self._gpu_share,
            gpu_models=tuple(self._gpu_models),
            timeout=timeout,
            priority=self._priority,
            tenant=self._tenant,
            labels=MappingProxyType(dict(self._labels)),
            idempotency_key=self._idempotency_key,
            progress_format=self._progress,  # type: ignore[arg-type]  # checked against _PROGRESS
            media_duration=media_duration,
            display_name=self._display_name,
        )

    @staticmethod
    def _artifacts(given: list[tuple[str, str | None]], field: str, bad: _Bad) -> tuple[Artifact, ...]:
        found: list[Artifact] = []
        for i, (uri, path) in enumerate(given):
            scheme = urlsplit(uri).scheme
            if not scheme or "://" not in uri:
                bad(f"{field}[{i}].uri", f"{uri!r} is not a URI (file://, s3://, http(s)://)")
                continue
            name = path if path is not None else _artifact_path(uri)
            parts = name.split("/")
            if not name or name.startswith("/") or ".." in parts:
                bad(f"{field}[{i}].path", f"{name!r}: a relative path inside the work directory, no '..'")
                continue
            found.append(Artifact(uri, name))
        return tuple(found)


def _duration(value: timedelta | float | None, field: str, bad: _Bad) -> timedelta | None:
    if value is None:
        return None
    if not isinstance(value, timedelta):
        if isinstance(value, bool) or not math.isfinite(value):
            bad(field, f"{value!r} is not a duration")
            return None
        value = timedelta(seconds=value)
    if value <= timedelta(0):
        bad(field, f"{value} must be positive")
        return None
    return value
