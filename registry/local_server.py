"""Local MLflow processes (``mlflow server``, ``mlflow models serve``) for scripts and tests.

A free port on 127.0.0.1, a wait until the process answers, and a stop that takes its whole
process group (the server's workers with it).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import CrackopsError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen | None, log: Path | None = None, timeout: float = 180.0) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log's tail, if ``proc`` exits."""
    deadline = time.monotonic() + timeout

    def tail() -> str:
        return f":\n{log.read_text()[-3000:]}" if log is not None and log.is_file() else ""

    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise CrackopsError(f"{' '.join(map(str, proc.args[:3]))} exited with status {proc.returncode}{tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise CrackopsError(f"{url} did not answer within {timeout:.0f} s{tail()}")


def start_mlflow_server(backend_store_uri: str, log: Path, artifacts_destination: Path | None = None
                        ) -> tuple[str, subprocess.Popen]:
    """``mlflow server`` on a free local port with one worker; returns its URL once it answers."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_store_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifacts_destination is not None:
        command += ["--artifacts-destination", str(artifacts_destination)]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, log)
    except BaseException:
        stop_process_group(proc)
        raise
    return url, proc


@contextmanager
def running_mlflow_server(folder: Path) -> Iterator[str]:
    """An ``mlflow server`` with its SQLite store and proxied artifacts in ``folder``; yields its URL
    and stops it (and its workers) afterwards."""
    url, proc = start_mlflow_server(f"sqlite:///{folder}/mlflow.db", folder / "server.log", folder / "artifacts")
    try:
        yield url
    finally:
        stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group ``proc`` leads, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
