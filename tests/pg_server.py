"""A throwaway PostgreSQL server for tests: initdb + pg_ctl on 127.0.0.1 and a free port.

Everything lives in one temporary folder (data, socket, log) that :meth:`PostgresServer.stop`
removes. PostgreSQL refuses to run as root, so under root (CI) the server runs as the
``postgres`` user (else ``nobody``) and the folder belongs to that user. Connections need the
password of a generated superuser, so other users of the machine cannot reach the test data.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from registry.local_server import free_port

SERVER_USER = "crackops"
_TOOLS = ("initdb", "pg_ctl", "postgres")


class PostgresUnavailable(Exception):
    """No PostgreSQL server binaries on this machine (the message says where we looked)."""


def find_bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: PATH first, then the newest
    ``/usr/lib/postgresql/*/bin`` (Debian and Ubuntu keep the server binaries off PATH)."""
    candidates = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda path: _version_key(Path(path).parent.name), reverse=True)
    candidates += [Path(path) for path in versions]
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in _TOOLS):
            return folder
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH "
                              "or in /usr/lib/postgresql/*/bin; install them (apt-get install postgresql)")


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def _run_as() -> pwd.struct_passwd | None:
    """The account to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a 'postgres' nor a 'nobody' account exists "
                              "(PostgreSQL refuses to run as root)")


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1; :meth:`new_database` hands out fresh empty databases."""

    def __init__(self, bin_dir: Path | None = None):
        self.bin_dir = bin_dir or find_bin_dir()
        self.account = _run_as()
        self.password = secrets.token_hex(12)
        self.port: int | None = None
        self.root: Path | None = None
        self._count = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 60.0, attempts: int = 3) -> "PostgresServer":
        # Not pytest's tmp_path: its /tmp/pytest-of-<user> is private to us, and under root the
        # server runs as another account that must reach its data folder.
        self.root = Path(tempfile.mkdtemp(prefix="crackops-pg-"))
        try:
            (self.root / "pwfile").write_text(self.password + "\n")
            (self.root / "run").mkdir()
            if self.account is not None:
                os.chmod(self.root, 0o755)
                for path in (self.root, self.root / "pwfile", self.root / "run"):
                    os.chown(path, self.account.pw_uid, self.account.pw_gid)
            self._call("initdb", "-D", str(self.data), "-U", SERVER_USER, "--pwfile", str(self.root / "pwfile"),
                       "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
                       "--locale=C", "--no-sync")
            (self.root / "pwfile").unlink()
            for attempt in range(attempts):
                # A free port may be taken by someone else before the server binds it: retry.
                self.port = free_port()
                options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                           f"-c unix_socket_directories={self.root / 'run'} "
                           "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                           "-c max_connections=200")
                result = self._call("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                                    "-w", "-t", str(int(timeout)), "start", check=False)
                if result.returncode == 0:
                    break
                if attempt == attempts - 1 or "already in use" not in self._log_tail():
                    raise RuntimeError(f"pg_ctl start failed ({result.returncode}): {result.stdout}\n{self._log_tail()}")
            self._wait_until_up(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server and remove its folder (immediate shutdown: no checkpoint of data that is
        deleted next; the server ends its sessions, so clients still connected do not block it)."""
        if self.root is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._call("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop", check=False)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- databases ---------------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SERVER_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "test") -> str:
        """Create a fresh, empty database (no schema at all) and return its SQLAlchemy URL."""
        self._count += 1
        name = f"{prefix}_{os.getpid()}_{self._count}"
        with self._connect("postgres") as connection:
            connection.cursor().execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    # -- helpers -----------------------------------------------------------------------------
    def _connect(self, database: str):
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=SERVER_USER, password=self.password,
                                      dbname=database, connect_timeout=5)
        connection.autocommit = True
        return _Closing(connection)

    def _wait_until_up(self, timeout: float) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._connect("postgres") as connection:
                    connection.cursor().execute("SELECT 1")
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL on 127.0.0.1:{self.port} did not accept connections "
                                       f"within {timeout:.0f} s:\n{self._log_tail()}") from None
                time.sleep(0.1)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _call(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        kwargs = {}
        if self.account is not None:
            env.update(HOME=str(self.root), USER=self.account.pw_name, LOGNAME=self.account.pw_name)
            kwargs = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        # cwd: the server account may not be allowed into ours.
        result = subprocess.run([str(self.bin_dir / tool), *args], cwd=self.root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}):\n{result.stdout}")
        return result


class _Closing:
    """``with`` for a psycopg2 connection that closes it (psycopg2's own ``with`` only commits)."""

    def __init__(self, connection):
        self.connection = connection

    def __enter__(self):
        return self.connection

    def __exit__(self, *exc) -> None:
        self.connection.close()
