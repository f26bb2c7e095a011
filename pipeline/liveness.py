"""Which process owns a leftover (a temporary folder, a RUNNING MLflow run), and is it still alive?

A SIGKILL runs no cleanup, so leftovers carry their owner's identity and the next run removes
those whose owner has gone. An owner on another host, or in another PID namespace, cannot be
checked from here and counts as alive: only what is provably dead is ever cleaned up.
"""
from __future__ import annotations

import hashlib
import os
import socket
from functools import lru_cache


@lru_cache(maxsize=1)
def _host_key() -> str:
    """Eight hex digits naming this host and PID namespace (``unshare --pid`` hosts differ)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha1(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused PID apart); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_token(pid: int | None = None) -> str:
    """``HOSTKEY-PID-STARTTIME`` of this process (or ``pid``): safe in file names and MLflow tags."""
    pid = os.getpid() if pid is None else pid
    return f"{_host_key()}-{pid}-{_start_time(pid) or 0}"


def owner_is_dead(token: str) -> bool:
    """True only when ``token``'s process was on this host and PID namespace and has ended."""
    parts = token.split("-")
    if len(parts) != 3 or parts[0] != _host_key() or not parts[1].isdigit():
        return False
    if not os.path.isdir("/proc/self"):
        return False  # no procfs (not Linux): nothing can be proven
    return _start_time(int(parts[1])) != parts[2]
