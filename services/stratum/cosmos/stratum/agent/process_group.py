"""The job's process group, seen through ``/proc`` and signalled as a whole.

A job runs as its own session and process group (its main process leads it), so these reach every
process it started, also the ones that outlived the main process.
"""

from __future__ import annotations

import contextlib
import os
import signal


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs; zombies do not count.

    ``killpg(pgid, 0)`` alone also sees zombies: orphans are reparented to PID 1, and where PID 1
    never reaps (a container without an init, some sandboxes) they stay zombies for good.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member changed its uid (a setuid program): still there
    return bool(group_members(pgid)) if os.path.isdir("/proc/self") else True


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid``, from ``/proc``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # Fields after "(comm)": state, ppid, pgrp, ...; comm itself may hold spaces and parens.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the group; a group that is gone (or out of reach) is left alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
