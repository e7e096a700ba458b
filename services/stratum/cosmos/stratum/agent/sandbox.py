"""Who a job runs as and what it can reach: an unprivileged uid, rlimits, a private mount namespace.

An agent usually runs as root (it manages GPUs, containers and other users' files); its jobs never
do. When the agent is root, each job runs as an unprivileged user: by default one uid per *tenant*,
allocated from ``--job-uid-range`` and remembered in the agent's work root (so a tenant keeps its
uid across restarts; no ``/etc/passwd`` entry is needed), with a private gid of the same number and
no supplementary groups; or one fixed ``--job-user``. Jobs of one tenant share a uid on purpose: the
encode workflow's jobs share a scratch directory and the tenant's outputs. Tenants are isolated
from each other, and every job from the agent (its keys, its other files).

A job's interpreter may live where its uid cannot go (``/root/.pyenv`` under a 0700 ``/root``, a
clone under a private home). So the job starts in a private mount namespace in which each
directory it cannot traverse on the way to the paths it needs (the interpreter's prefixes and
``sys.path``, its work dir, its tenant's directories) is covered with a tmpfs holding only those
paths, bind-mounted back. Everything else under such a directory (the rest of ``/root``) is gone
from the job's view, and the agent's PKI directory is covered too. Where no namespace can be made
(the agent is not root, or the kernel refuses), the job runs without one and this is logged once.

The agent plans everything (:meth:`Sandbox.prepare` gives a :class:`~.sandbox_plan.Plan`, which
:mod:`.sandbox_plan` holds); the job's first process, ``sandbox_exec.py``, only carries the plan out
as root and then execs the job in place: unshare, mounts, rlimits, setgroups, setresgid, setresuid,
no-new-privs, umask, chdir, exec.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import re
import resource
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cosmos import errors
from cosmos.stratum.agent.sandbox_plan import Cover, Plan, interpreter_paths, plan_covers, probe_namespace

log = logging.getLogger(__name__)

UID_FILE = ".cosmos-job-uids.json"
"""Where the agent remembers each tenant's uid, in its work root (root-owned, 0600)."""
DEFAULT_UID_RANGE = (200000, 299999)
DEFAULT_TENANT = "default"
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

GiB = 1 << 30


class SandboxError(errors.CosmosError):
    """A job's sandbox cannot be set up (bad tenant name, uid range exhausted, bad setting)."""


@dataclass(frozen=True)
class Limits:
    """rlimits of every job; 0 means unlimited.

    Memory is limited with ``RLIMIT_DATA`` (private writable memory: heap and anonymous mappings),
    not ``RLIMIT_AS``: Python and ffmpeg reserve far more address space than they touch (one 64 MiB
    malloc arena per thread, thread stacks, mapped libraries), so an address-space limit near a
    job's real need kills healthy encodes, while the data limit tracks what a job can actually
    consume.
    """

    memory_floor_bytes: int = 2 * GiB
    """The smallest data limit, whatever the job declares."""
    memory_headroom: float = 2.0
    """A job's data limit is its ``resources.memory_bytes`` times this (at least the floor)."""
    default_memory_bytes: int = 32 * GiB
    """The data limit of jobs that declare no memory."""
    processes: int = 4096
    """RLIMIT_NPROC: counted per uid, so across all running jobs of one tenant on this host."""
    file_size_bytes: int = 256 * GiB
    """RLIMIT_FSIZE: the largest file a job may write."""
    open_files: int = 8192
    """RLIMIT_NOFILE."""

    def memory_for(self, declared: int) -> int:
        """The data limit of a job that declares ``declared`` bytes of memory (0: none)."""
        if declared <= 0:
            return self.default_memory_bytes
        return max(int(declared * self.memory_headroom), self.memory_floor_bytes)

    def rlimits(self, declared_memory: int) -> list[tuple[int, int]]:
        """(resource, value) pairs to set; core dumps are always off (they would hold secrets)."""
        pairs = [(resource.RLIMIT_CORE, 0)]
        for res, value in (
            (resource.RLIMIT_DATA, self.memory_for(declared_memory)),
            (resource.RLIMIT_NPROC, self.processes),
            (resource.RLIMIT_FSIZE, self.file_size_bytes),
            (resource.RLIMIT_NOFILE, self.open_files),
        ):
            if value > 0:
                pairs.append((res, value))
        return pairs


@dataclass(frozen=True)
class Identity:
    """The uid and gid a job runs as."""

    uid: int
    gid: int


class UidMap:
    """One uid per tenant from ``[first, last]``, remembered in ``<work_root>/.cosmos-job-uids.json``.

    Agents sharing a work root share the map (an exclusive ``flock`` guards each allocation).
    """

    def __init__(self, work_root: Path, first: int, last: int) -> None:
        if not 0 < first <= last:
            raise SandboxError(f"job uid range {first}-{last}: expected 0 < FIRST <= LAST")
        self.path = work_root / UID_FILE
        self.first, self.last = first, last
        self._cache: dict[str, int] = {}

    def uid(self, tenant: str) -> int:
        """The tenant's uid, allocated (and persisted) on first use."""
        if tenant in self._cache:
            return self._cache[tenant]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            text = handle.read()
            known: dict[str, int] = json.loads(text) if text.strip() else {}
            uid = known.get(tenant)
            if uid is None:
                taken = set(known.values())
                uid = next((u for u in range(self.first, self.last + 1) if u not in taken), None)
                if uid is None:
                    raise SandboxError(
                        f"the job uid range {self.first}-{self.last} is exhausted ({len(taken)} tenants)"
                    )
                known[tenant] = uid
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(known, indent=1, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                log.info("allocated a job uid", extra={"fields": {"tenant": tenant, "uid": uid}})
        self._cache[tenant] = uid
        return uid


def parse_uid_range(text: str) -> tuple[int, int]:
    """``200000-299999`` as (first, last)."""
    first, sep, last = text.partition("-")
    try:
        if not sep:
            raise ValueError
        return int(first), int(last)
    except ValueError:
        raise errors.ConfigError(
            f"--job-uid-range {text!r}: expected FIRST-LAST, e.g. 200000-299999"
        ) from None


class ByteSize(int):
    """A byte count flag: ``1073741824``, ``512M``, ``2G``, ``1T`` (binary units); 0 means unlimited."""

    def __new__(cls, text: str | int) -> ByteSize:
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        raw = str(text).strip().upper().removesuffix("B").removesuffix("I")
        factor = units.get(raw[-1:], 1)
        number = raw[:-1] if raw[-1:] in units else raw
        value = int(float(number) * factor)  # ValueError for anything else
        if value < 0:
            raise ValueError(f"{text!r} is negative")
        return super().__new__(cls, value)


def resolve_user(text: str) -> Identity:
    """``--job-user NAME|UID``: a name from the password database, or a number (gid = uid)."""
    if text.isdigit():
        uid = int(text)
        ident = Identity(uid, uid)
    else:
        try:
            entry = pwd.getpwnam(text)
        except KeyError:
            raise errors.ConfigError(f"--job-user {text!r}: no such user") from None
        ident = Identity(entry.pw_uid, entry.pw_gid)
    if ident.uid == 0 or ident.gid == 0:
        raise errors.ConfigError(f"--job-user {text!r} is root; jobs never run as root")
    return ident


def tenant_name(tenant: str) -> str:
    """The tenant as a path component and uid-map key; empty (no security) is ``default``."""
    name = tenant or DEFAULT_TENANT
    if not TENANT_NAME.match(name):
        raise SandboxError(f"tenant {tenant!r} is not a safe directory name")
    return name


@dataclass
class Sandbox:
    """The agent's job sandbox settings, and the per-job :class:`Plan` they give."""

    work_root: Path
    limits: Limits = field(default_factory=Limits)
    uid_range: tuple[int, int] = DEFAULT_UID_RANGE
    job_user: Identity | None = None
    """A fixed user for every job, instead of one uid per tenant."""
    tenant_roots: Sequence[Path] = ()
    """Directories under which each tenant gets ``<root>/<tenant>``, owned by its uid (shared scratch,
    outputs): jobs of a tenant can create what they need there, other tenants cannot look in."""
    hidden: Sequence[Path] = ()
    """Directories covered with an empty tmpfs in the job's view (the agent's PKI directory)."""
    namespaces: bool = True
    """Try a private mount namespace (when root)."""
    is_root: bool = field(default_factory=lambda: os.geteuid() == 0)
    _uids: UidMap | None = field(default=None, init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)
    _ns_broken: str = field(default="", init=False, repr=False)
    _probed: bool = field(default=False, init=False, repr=False)

    def identity(self, tenant: str) -> Identity | None:
        """Who the job of ``tenant`` runs as; None when the agent cannot switch users."""
        name = tenant_name(tenant)
        if not self.is_root:
            if not self._warned:
                self._warned = True
                log.warning(
                    "the agent does not run as root: jobs run as the agent's own user and could read "
                    "what the agent can (its keys included); run the agent as root to sandbox jobs",
                    extra={"fields": {"uid": os.geteuid()}},
                )
            return None
        if self.job_user is not None:
            return self.job_user
        if self._uids is None:
            self._uids = UidMap(self.work_root, *self.uid_range)
        uid = self._uids.uid(name)
        return Identity(uid, uid)

    def prepare(self, tenant: str, work_dir: Path, declared_memory: int) -> Plan:
        """Make the attempt's work dir and the tenant's directories its own; plan the child's setup.

        Runs in the agent (a thread): the work dir (already created) becomes the job's, mode 0700;
        its parents up to the work root are traversable but not listable (0711).
        """
        ident = self.identity(tenant)
        rlimits = self.limits.rlimits(declared_memory)
        if ident is None:
            return Plan(rlimits=rlimits, work_dir=str(work_dir))
        name = tenant_name(tenant)
        root = self.work_root.absolute()
        parent = work_dir.parent
        while parent == root or root in parent.parents:
            os.chmod(parent, 0o711)  # traversable to reach one's own work dir, not listable
            parent = parent.parent
        chown_tree(work_dir, ident)
        os.chmod(work_dir, 0o700)
        own = [work_dir]
        for tenant_root in self.tenant_roots:
            tenant_root.mkdir(parents=True, exist_ok=True)
            os.chmod(tenant_root, 0o711)
            mine = tenant_root / name
            with contextlib.suppress(FileExistsError):
                mine.mkdir(mode=0o700)
            info = os.lstat(mine)
            if not stat.S_ISDIR(info.st_mode):
                raise SandboxError(f"{mine} is not a directory")
            if (info.st_uid, info.st_gid) != (ident.uid, ident.gid):
                os.chown(mine, ident.uid, ident.gid, follow_symlinks=False)
            if info.st_mode & 0o007:
                os.chmod(mine, stat.S_IMODE(info.st_mode) & ~0o007)  # other tenants stay out
            own.append(mine)
        mounts: list[Cover] = []
        hidden: list[str] = []
        if self.namespaces and not self._probed:
            self._probed = True
            why = probe_namespace()
            if why:
                self.namespace_failed(why)
        if self.namespaces and not self._ns_broken:
            mounts = plan_covers([*interpreter_paths(), *own], ident)
            needed = [*interpreter_paths(), *own]
            # Never hide what the job needs (a key kept beside the work root, say).
            hidden = [
                str(p.absolute())
                for p in self.hidden
                if p.is_dir() and not any(n == p.absolute() or p.absolute() in n.parents for n in needed)
            ]
        return Plan(
            rlimits=rlimits,
            work_dir=str(work_dir),
            identity=ident,
            namespace=self.namespaces and not self._ns_broken,
            covers=mounts,
            hidden=hidden,
        )

    def namespace_failed(self, why: str) -> None:
        """Stop trying namespaces after the kernel refused one (logged once)."""
        if not self._ns_broken:
            self._ns_broken = why or "refused"
            log.warning(
                "cannot make a private mount namespace for jobs; they run without one (directories "
                "their uid cannot traverse stay unreachable)",
                extra={"fields": {"error": self._ns_broken}},
            )


def chown_tree(top: Path, ident: Identity) -> None:
    """Give the work dir and what the agent staged into it to the job (never following links)."""
    os.chown(top, ident.uid, ident.gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), ident.uid, ident.gid, follow_symlinks=False)
