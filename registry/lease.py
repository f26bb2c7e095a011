"""A lease on a registered model, held in one of its tags: who may move its aliases right now.

The MLflow registry has no compare-and-set, only "set tag" (last writer wins) and "read tag", and
that is all a remote tracking server offers; a file lock would only serialise processes on one
machine with the SQLite store. So the lease uses Fischer's timed mutual exclusion over the tag:

1. read the tag; while another owner's unexpired lease is in it, wait;
2. write our own lease (owner id, expiry); if more than ``max_gap_s`` passed since the read
   started, start over (the timing bound below would not hold);
3. wait ``settle_s`` (> ``max_gap_s``), read again: the lease is ours only if the tag still names us.

Guarantee: two crackops processes never both hold the lease, provided (a) each read-then-write of
step 2 lands within ``max_gap_s`` (enforced: slower attempts retry), (b) the machines' clocks agree
to well within ``ttl_s`` (expiry is wall-clock time, shared through the tag), and (c) a holder
finishes, or notices it lost the lease, within ``ttl_s``: :meth:`Lease.check` re-reads the tag
before every registry write and refuses when the lease is not ours or has less than
``min_remaining_s`` left. A process killed while holding the lease leaves a tag that expires
after ``ttl_s``; nothing else needs cleaning. Not covered: aliases moved by hand (UI, other
tools), and a holder frozen (SIGSTOP, VM pause) between its check and its write for longer than
``min_remaining_s``.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.errors import CrackopsError

LEASE_TAG = "promotion.lease"
WAIT_LINE_EVERY_S = 30.0


def _holder_text(holder: dict[str, Any] | None) -> str:
    return f"{holder.get('host')} pid {holder.get('pid')} ({holder.get('purpose')})" if holder else "unknown"


class LeaseError(CrackopsError):
    """The lease could not be taken in time, or was lost while held."""


@dataclass(frozen=True)
class LeaseSettings:
    ttl_s: float = 120.0  # a gate decision and three registry writes take seconds, not minutes
    settle_s: float = 1.5  # Fischer's delay; must exceed max_gap_s
    max_gap_s: float = 0.75  # slowest accepted read-then-write
    wait_s: float = 180.0  # longer than ttl_s, so a killed holder's lease is outwaited
    poll_s: float = 0.5
    min_remaining_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.settle_s > self.max_gap_s:
            raise ValueError(f"settle_s ({self.settle_s}) must exceed max_gap_s ({self.max_gap_s})")
        if not self.ttl_s > self.min_remaining_s + self.settle_s:
            raise ValueError("ttl_s must exceed min_remaining_s + settle_s")


def read_lease(client: MlflowClient, name: str) -> dict[str, Any] | None:
    """The lease in the tag, or None when there is none (or it is unreadable, which counts as none)."""
    text = client.get_registered_model(name).tags.get(LEASE_TAG)
    if not text:
        return None
    try:
        lease = json.loads(text)
    except json.JSONDecodeError:
        return None
    return lease if isinstance(lease, dict) and "owner" in lease and "expires" in lease else None


def _expired(lease: dict[str, Any] | None, now: float) -> bool:
    return lease is None or float(lease.get("expires", 0)) <= now


class Lease:
    """``with Lease(client, name, purpose):`` holds the lease for the block; see the module docstring."""

    def __init__(self, client: MlflowClient, name: str, purpose: str,
                 settings: LeaseSettings = LeaseSettings()) -> None:
        self.client, self.name, self.purpose, self.settings = client, name, purpose, settings
        self.owner = uuid.uuid4().hex
        self.expires = 0.0

    def _record(self) -> str:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "purpose": self.purpose, "expires": self.expires})

    def acquire(self) -> None:
        s = self.settings
        deadline = time.monotonic() + s.wait_s
        holder: dict[str, Any] | None = None
        said_at: float | None = None  # when we last said we are waiting (a line each 30 s, not each poll)
        while time.monotonic() < deadline:
            started = time.monotonic()
            holder = read_lease(self.client, self.name)
            if not _expired(holder, time.time()) and holder.get("owner") != self.owner:
                if said_at is None or started - said_at >= WAIT_LINE_EVERY_S:
                    said_at = started
                    print(f"waiting for the promotion lease of {self.name!r}: held by {_holder_text(holder)}, "
                          f"expires in {max(0.0, float(holder['expires']) - time.time()):.0f} s; giving up in "
                          f"{deadline - started:.0f} s", file=sys.stderr, flush=True)
                time.sleep(s.poll_s)
                continue
            self.expires = time.time() + s.ttl_s
            try:
                self.client.set_registered_model_tag(self.name, LEASE_TAG, self._record())
            except MlflowException:
                # The SQL stores upsert a tag with select-then-insert: a simultaneous writer makes
                # ours fail. That is contention, not an error: read again.
                time.sleep(s.poll_s)
                continue
            if time.monotonic() - started > s.max_gap_s:
                # Too slow to trust the settle delay; a competitor may have entered meanwhile.
                time.sleep(s.poll_s)
                continue
            time.sleep(s.settle_s)
            holder = read_lease(self.client, self.name)
            if holder is not None and holder.get("owner") == self.owner:
                return
        raise LeaseError(f"registered model {self.name!r}: could not take the promotion lease in {s.wait_s:.0f} s; "
                         f"held by {_holder_text(holder)}. A killed holder's lease expires {s.ttl_s:.0f} s after it "
                         "was taken")

    def check(self) -> None:
        """Refuse (LeaseError) unless the tag still names us with ``min_remaining_s`` to spare."""
        holder = read_lease(self.client, self.name)
        if holder is None or holder.get("owner") != self.owner:
            raise LeaseError(f"registered model {self.name!r}: the promotion lease was lost; nothing more was changed")
        if float(holder["expires"]) - time.time() < self.settings.min_remaining_s:
            raise LeaseError(f"registered model {self.name!r}: the promotion lease is about to expire; "
                             "nothing more was changed")

    def release(self) -> None:
        """Delete the tag if it is still ours and not near expiry (else it simply expires)."""
        try:
            self.check()
            self.client.delete_registered_model_tag(self.name, LEASE_TAG)
        except (LeaseError, MlflowException):
            # Never mask the error that ended the block; an unreleased lease expires after ttl_s.
            return

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
