"""One lock per database, held by whichever process (on whichever host) uses that database.

Workers started together race on the same few steps: creating a database schema (Optuna's
storage, MLflow's tracking store), queueing a study's grid, creating the sweep's one MLflow parent
run, taking the next trial. :func:`database_lock` serialises such steps where the data lives:

* PostgreSQL: a session-level advisory lock (``pg_advisory_lock``), released when the
  connection closes, so a worker killed while holding it never blocks the others;
* MySQL: ``GET_LOCK``, also tied to the connection;
* SQLite: an OS file lock beside the database file (SQLite files are local to one host, and the
  kernel drops the lock with the process);
* anything else (an HTTP tracking server serialises its own writes): no lock.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import CrackopsError

# Seconds to reach a database server before giving up with one clear line.
CONNECT_TIMEOUT = 10


class DatabaseLockError(CrackopsError):
    """The database to lock cannot be reached; the message names it (password hidden)."""


def masked_url(url: str) -> str:
    """``url`` with any password hidden (it goes into logs, errors and MLflow params)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy understands: show only the scheme
        return url.split(":", 1)[0] + ":..."


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:`` URL; None for other URLs and in-memory SQLite."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name`` (the same in every process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def connect_args(url: str) -> dict[str, object]:
    """Driver options that make an unreachable server fail within seconds, not minutes."""
    if url.startswith(("postgresql", "postgres")):
        return {"connect_timeout": CONNECT_TIMEOUT}
    if url.startswith("mysql"):
        return {"connect_timeout": CONNECT_TIMEOUT}
    return {}


@contextmanager
def database_lock(url: str, name: str) -> Iterator[None]:
    """Hold the lock ``name`` of the database at ``url`` for the block (blocks until it is free)."""
    database = sqlite_file(url)
    if database is not None:
        from filelock import FileLock

        database.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        with FileLock(str(database.with_name(f".{database.name}.{digest}.lock"))):
            yield
        return
    if not url.startswith(("postgresql", "postgres", "mysql")):
        yield
        return
    import sqlalchemy

    # MySQL's lock names span the server: the database's name keeps two studies' locks apart.
    lock, unlock, argument = (("SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)",
                               {"name": hashlib.sha256(f"{url}:{name}".encode()).hexdigest()[:64]})
                              if url.startswith("mysql") else
                              ("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)",
                               {"key": lock_key(name)}))
    try:
        connection = _engine(url).connect()
    except Exception as error:  # noqa: BLE001 - bad URL, missing driver, server down: one line
        raise DatabaseLockError(connect_error_message(url, error)) from None
    try:
        connection.execute(sqlalchemy.text(lock), argument)
        connection.commit()
        yield
    finally:
        try:
            connection.execute(sqlalchemy.text(unlock), argument)
            connection.commit()
            connection.close()  # back to the pool, unlocked
        except Exception:  # noqa: BLE001 - a broken connection: dropping it ends the session and its lock
            connection.invalidate()
            connection.close()


_ENGINES: dict[str, Any] = {}


def _engine(url: str) -> Any:
    """One small pool of lock connections per database and process: connecting to a server that
    checks passwords costs more than the lock itself, and a sweep takes a lock before every trial."""
    import sqlalchemy

    if url not in _ENGINES:
        _ENGINES[url] = sqlalchemy.create_engine(url, pool_size=1, max_overflow=4, pool_pre_ping=True,
                                                 connect_args=connect_args(url))
    return _ENGINES[url]


def dispose_engines() -> None:
    """Close every pooled lock connection of this process (a process that moves on to other databases)."""
    while _ENGINES:
        _ENGINES.popitem()[1].dispose()


def connect_error_message(url: str, error: BaseException) -> str:
    """One line for a failed connection to ``url``: the driver's own error, the password hidden."""
    from sqlalchemy.exc import NoSuchModuleError

    cause = getattr(error, "orig", None) or error  # the driver's error inside SQLAlchemy's wrapper
    detail = f"{type(cause).__name__}: {_first_line(cause)}"
    if isinstance(error, (ImportError, NoSuchModuleError)):
        # crackops installs psycopg (postgresql:// and postgresql+psycopg://) and psycopg2.
        return f"no database driver for {masked_url(url)}: {detail} (install it, or write postgresql://...)"
    return f"cannot reach database {masked_url(url)}: {detail}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else ""
