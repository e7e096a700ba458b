"""The plan of one job's sandbox, made in the agent and carried out by ``sandbox_exec.py`` in the
job's first process: rlimits, identity, umask, and the directories a private mount namespace covers
(those the job's uid cannot traverse on its way to what it needs).

The settings that give a plan, and why jobs are sandboxed at all, are in
:mod:`cosmos.stratum.agent.sandbox`.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cosmos.stratum.agent.sandbox import Identity

JOB_UMASK = 0o027
"""Files a job creates are private to its tenant (group: the tenant's private gid)."""


def interpreter_paths() -> list[Path]:
    """What a job needs to run the agent's own Python tools (``python3 -m cosmos.optimus.media``)."""
    paths = {sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    paths.update(p for p in sys.path if p and os.path.isabs(p))
    out = []
    for p in sorted(paths):
        with contextlib.suppress(OSError):
            real = os.path.realpath(p)
            if os.path.exists(real):
                out.append(Path(real))
            if p != real and os.path.exists(p):
                out.append(Path(os.path.abspath(p)))
    return out


def _traversable(info: os.stat_result, ident: Identity) -> bool:
    if info.st_uid == ident.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == ident.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


@dataclass(frozen=True)
class Cover:
    """A directory the job cannot traverse: a tmpfs goes over it, ``keep`` are bound back."""

    directory: str
    keep: tuple[str, ...]
    """Entries of ``directory`` (names) the job needs."""
    files: tuple[str, ...]
    """The subset of ``keep`` that are not directories (bound onto an empty file)."""


def plan_covers(paths: Iterable[Path], ident: Identity) -> list[Cover]:
    """Every directory on the way to ``paths`` the job's uid cannot traverse, shallowest first."""
    keep: dict[str, set[str]] = {}
    files: dict[str, set[str]] = {}
    for path in paths:
        parts = path.absolute().parts
        for depth in range(1, len(parts)):
            directory = os.path.join(*parts[:depth])
            try:
                info = os.stat(directory)
            except OSError:
                break
            if not _traversable(info, ident):
                child = parts[depth]
                keep.setdefault(directory, set()).add(child)
                if not os.path.isdir(os.path.join(directory, child)):
                    files.setdefault(directory, set()).add(child)
    return [
        Cover(d, tuple(sorted(keep[d])), tuple(sorted(files.get(d, ()))))
        for d in sorted(keep, key=lambda d: (d.count("/"), d))
    ]


HELPER = Path(__file__).with_name("sandbox_exec.py")
"""The program that sets the sandbox up and execs the job (see its docstring for why not preexec_fn)."""


def _helper(*args: str) -> list[str]:
    # -I: no user site, no PYTHON* variables; -S: no site-packages in a process that is still root.
    return [sys.executable, "-I", "-S", str(HELPER), *args]


@dataclass
class Plan:
    """Everything the job's first process does before ``exec``, computed in the agent."""

    rlimits: list[tuple[int, int]]
    work_dir: str
    identity: Identity | None = None
    namespace: bool = False
    covers: list[Cover] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)

    def command(self, argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], int]:
        """The argv that runs ``argv`` in this sandbox, and the fd carrying the plan (pass it on).

        The plan travels in a memfd, not on the command line: it holds the job's environment.
        """
        plan = {
            "argv": list(argv),
            "env": dict(env),
            "rlimits": self.rlimits,
            "work_dir": self.work_dir,
            "identity": None
            if self.identity is None
            else {"uid": self.identity.uid, "gid": self.identity.gid},
            "namespace": self.namespace,
            "covers": [
                {"directory": c.directory, "keep": list(c.keep), "files": list(c.files)} for c in self.covers
            ],
            "hidden": self.hidden,
            "umask": JOB_UMASK,
        }
        fd = os.memfd_create("cosmos-job-plan", 0)  # no MFD_CLOEXEC: the helper inherits it
        try:
            os.write(fd, json.dumps(plan).encode())
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return _helper(str(fd)), fd


def probe_namespace() -> str:
    """Empty when a job's first process can make a private mount namespace, else why not."""
    if os.geteuid() != 0:
        return "the agent is not root"
    try:
        done = subprocess.run(_helper("--probe"), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    return "" if done.returncode == 0 else done.stderr.strip() or f"exit code {done.returncode}"
