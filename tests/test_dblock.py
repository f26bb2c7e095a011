"""pipeline.dblock's helpers (no server needed; cross-process locking is in test_stores.py)."""
from __future__ import annotations

import importlib.util

import pytest

from pipeline.dblock import (DatabaseLockError, connect_args, connect_error_message, database_lock, lock_key,
                             masked_url, sqlite_file)


def test_masked_url_hides_only_the_password():
    assert masked_url("postgresql+psycopg2://me:s3cret@db.example:5432/sweeps") == \
        "postgresql+psycopg2://me:***@db.example:5432/sweeps"
    assert masked_url("https://me:s3cret@mlflow.example/prefix") == "https://me:***@mlflow.example/prefix"
    assert masked_url("sqlite:///sweeps.db") == "sqlite:///sweeps.db"
    assert masked_url("not a url: s3cret") == "not a url:..."


def test_sqlite_file(tmp_path):
    assert str(sqlite_file("sqlite:///sweeps.db")) == "sweeps.db"
    assert sqlite_file(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql+psycopg2://h/db") is None


def test_lock_key_is_a_stable_signed_64_bit_key():
    assert lock_key("crackops-optuna-schema") == lock_key("crackops-optuna-schema")
    assert lock_key("crackops-optuna-schema") != lock_key("crackops-mlflow-store")
    assert all(-2**63 <= lock_key(name) < 2**63 for name in ("a", "b", "crackops-mlflow-store"))


def test_connect_args_bound_the_connect_time():
    assert connect_args("postgresql+psycopg2://h/db")["connect_timeout"] > 0
    assert connect_args("sqlite:///x.db") == {}


def test_database_lock_beside_a_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path}/new/sweeps.db"
    with database_lock(url, "one"):
        with database_lock(url, "another"):  # different names never wait for each other
            locks = sorted(path.name for path in (tmp_path / "new").iterdir())
    assert len(locks) == 2 and all(name.startswith(".sweeps.db.") and name.endswith(".lock") for name in locks)
    assert not (tmp_path / "new" / "sweeps.db").exists()  # the lock does not create the database


def test_database_lock_is_a_no_op_for_servers_that_serialise_themselves():
    with database_lock("http://127.0.0.1:1", "x"):
        pass


@pytest.mark.skipif(importlib.util.find_spec("pg8000") is not None, reason="pg8000 is installed")
def test_a_url_whose_driver_is_missing_names_it():
    with pytest.raises(DatabaseLockError) as caught:
        with database_lock("postgresql+pg8000://me:s3cret@127.0.0.1:1/db", "x"):
            pass
    message = str(caught.value)
    assert message.startswith("no database driver for postgresql+pg8000://me:***@127.0.0.1:1/db")
    assert "pg8000" in message and "postgresql://" in message and "s3cret" not in message


def test_connect_error_message_shows_the_driver_s_own_error():
    import sqlalchemy.exc

    class Driver(Exception):
        pass

    wrapped = sqlalchemy.exc.OperationalError("connect", {}, Driver("server said no\nDETAIL: more"))
    assert connect_error_message("postgresql+psycopg2://me:pw@h/db", wrapped) == \
        "cannot reach database postgresql+psycopg2://me:***@h/db: Driver: server said no"
