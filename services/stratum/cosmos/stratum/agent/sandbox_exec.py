"""The first program of a sandboxed job: set up the sandbox as root, then exec the job (same pid).

Run by the agent as ``python -I -S sandbox_exec.py PLAN_FD`` (or ``--probe``), never imported. It
uses the standard library only: ``-S`` keeps start-up short and site-packages out of a root process
a job's files could influence. The plan (see ``sandbox_plan.Plan``) arrives as JSON on an inherited
file descriptor, never on the command line (it carries the job's environment, secrets included).

Why not ``preexec_fn``: the agent is a multi-threaded gRPC process, and forking it with Python code
to run in the child runs gRPC's fork handlers, which abort. A fresh, single-threaded interpreter has
no such trouble. Order: unshare, mounts, rlimits, setgroups, setresgid, setresuid, no-new-privs,
umask, chdir, exec.
"""

import contextlib
import ctypes
import ctypes.util
import json
import os
import resource
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
EXIT_SANDBOX = 126
"""Exit code when the sandbox cannot be set up (or the program cannot be started): as a shell's."""

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return text.encode() if text else None

    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def private_namespace() -> None:
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing mounted from here on propagates back to the host.
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def cover(directory: str, keep: list[str], files: list[str]) -> None:
    """A tmpfs over ``directory`` holding only ``keep``, each bound back to what it was."""
    fds = [os.open(os.path.join(directory, name), os.O_PATH) for name in keep]
    mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0711,size=64k")
    for name, fd in zip(keep, fds, strict=True):
        target = os.path.join(directory, name)
        if name in files:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
        else:
            os.mkdir(target, 0o711)
        mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        os.close(fd)


def apply(plan: dict[str, Any]) -> None:
    if plan["namespace"]:
        private_namespace()
        for c in plan["covers"]:
            cover(c["directory"], c["keep"], c["files"])
        for directory in plan["hidden"]:
            # Already out of view when under a covered directory.
            with contextlib.suppress(OSError):
                mount("tmpfs", directory, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0000,size=4k")
    for res, value in plan["rlimits"]:
        _, hard = resource.getrlimit(res)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(res, (value, value))
    ident = plan["identity"]
    if ident is not None:
        os.setgroups([])
        os.setresgid(ident["gid"], ident["gid"], ident["gid"])
        os.setresuid(ident["uid"], ident["uid"], ident["uid"])
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.umask(plan["umask"])
    os.chdir(plan["work_dir"])


def main() -> int:
    if sys.argv[1:] == ["--probe"]:
        try:
            private_namespace()
        except OSError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    fd = int(sys.argv[1])
    with os.fdopen(fd, "rb") as handle:
        plan: dict[str, Any] = json.loads(handle.read())
    argv: list[str] = plan["argv"]
    env: dict[str, str] = plan["env"]
    try:
        apply(plan)
    except OSError as exc:
        print(f"cosmos sandbox: cannot set up the job's sandbox: {exc}", file=sys.stderr)
        return EXIT_SANDBOX
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        print(f"cosmos sandbox: cannot start {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else EXIT_SANDBOX
    return EXIT_SANDBOX  # not reached


if __name__ == "__main__":
    sys.exit(main())
