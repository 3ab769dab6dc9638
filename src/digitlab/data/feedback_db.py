"""Feedback database: URLs, engines (SQLite's locking and durability settings), the schema and its migrations."""

# * SQLite (the embedded default) runs in WAL mode with a busy timeout of BUSY_TIMEOUT_S and
#   `synchronous=FULL`; writes begin with `BEGIN IMMEDIATE`, reads with a deferred BEGIN. Several processes
#   (`digitlab serve --workers N`, the demo) then write to one file safely, one after the other; readers never
#   wait for writers nor hold them up; and a row whose insert has returned survives a kill or a power loss.
#   PostgreSQL (`postgresql+psycopg://`, psycopg 3) is for several API replicas sharing one store.
# * Schema versions: `schema_version` holds one row per applied migration; `migrate` applies the missing ones
#   in order, in one transaction, at every open. Two processes opening at once are serialised by the database
#   itself (SQLite's write lock, taken by BEGIN IMMEDIATE; a PostgreSQL transaction-level advisory lock), so the
#   second finds the work done; DDL is transactional in both, so a failed migration leaves no half-made schema.
#   Why not Alembic: it brings an ini file, an env.py, a scripts folder and a command to run before the service
#   starts, to manage one table; and its upgrade takes no lock, so two workers upgrading at once would race.
#   The thirty lines below do the one thing needed: apply each step once, in order, under a lock.

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from digitlab.core.errors import ConfigError, DigitlabError, StorageError

__all__ = ["FEEDBACK", "MIGRATIONS", "SCHEMA_VERSION", "URL_ENV", "FeedbackStoreError", "InvalidFeedback", "connection",
           "default_url", "insert_ignoring_duplicates", "migrate", "open_engine", "shown_url"]  # fmt: skip

URL_ENV = "DIGITLAB_FEEDBACK_DB"  # the store's URL when none is given
SESSION_MAX = 128
BUSY_TIMEOUT_S = 30.0  # how long a SQLite writer waits for another's lock before it gives up
_PG_MIGRATION_LOCK = 0x6469676974  # any constant: the advisory lock key that serialises migrations
URL_FORMS = "sqlite:///FILE or postgresql+psycopg://USER@HOST/DB"


class FeedbackStoreError(StorageError):
    """The store could not be opened, read or written (a database problem, not a bad row)."""


class InvalidFeedback(DigitlabError):
    """A row the store refuses: label not 0-9, wrong probabilities, unknown source, ..."""


def default_url() -> str:
    """$DIGITLAB_FEEDBACK_DB, else a SQLite file in the user's data folder ($XDG_DATA_HOME/digitlab/feedback.db):
    one store for every model, the API and the demo, never inside a run directory or the installed package."""
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV]
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{data / 'digitlab' / 'feedback.db'}"


def shown_url(url: str) -> str:
    """`url` as it may be printed or logged: without its password."""
    try:
        return parse_url(url).render_as_string(hide_password=True)
    except ConfigError:
        return "(not a database URL)"


def parse_url(text: str) -> URL:
    """A SQLAlchemy URL for sqlite or postgresql (plain `postgresql://` means psycopg 3); a path is a SQLite file."""
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        url = sa.make_url(text)
    except ArgumentError:
        raise ConfigError(f"not a database URL: expected {URL_FORMS}") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {url.get_backend_name()!r}: use {URL_FORMS}")
    return url


def open_engine(text: str, *, create: bool = True) -> Engine:
    """An engine for the URL (not yet connected). `create=False`: a missing SQLite file is an error."""
    url = parse_url(text)
    try:
        if url.get_backend_name() == "postgresql":
            # connect_timeout: an unreachable server fails in seconds, not after the OS's TCP timeout
            return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        return _sqlite_engine(url, create)
    except (NoSuchModuleError, ArgumentError) as e:
        raise ConfigError(f"unsupported database URL {url.render_as_string(hide_password=True)}: {e}") from None


def _sqlite_engine(url: URL, create: bool) -> Engine:
    memory = url.database in (None, "", ":memory:")
    if not memory:
        path = Path(url.database or "")
        if not create and not path.is_file():
            raise FeedbackStoreError(f"no feedback database at {path}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FeedbackStoreError(f"cannot create {path.parent}: {e.strerror or e}") from None
    options: dict[str, Any] = {"connect_args": {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}}
    if memory:  # one connection, or each would see its own empty database
        options["poolclass"] = sa.pool.StaticPool
    engine = sa.create_engine(url, **options)

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions begin below: the driver's own BEGIN skips DDL
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writes take the write lock at BEGIN (waiting up to the busy timeout): a deferred transaction that reads
        # and then writes fails at once with "database is locked" when another writer got in first. Reads stay
        # deferred, so that a long read (a fine-tuner streaming rows) never holds writers up.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


def _wal(cursor: Any) -> None:
    """Switch to WAL. SQLite answers "database is locked" at once, without its busy handler, while another process
    is switching a new file to WAL or recovering it: wait for that as the busy timeout would."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def connection(engine: Engine, what: str, *, write: bool) -> Iterator[Connection]:
    """A connection (in a write transaction when `write`, committed at the end) whose database errors become
    one-line errors: FeedbackStoreError, or InvalidFeedback for a row the schema's constraints refuse."""
    try:
        with engine.connect() as conn:
            if not write:
                yield conn
                return
            conn.execution_options(write=True)  # SQLite: BEGIN IMMEDIATE (see _sqlite_engine)
            with conn.begin():
                yield conn
    except IntegrityError as e:
        raise InvalidFeedback(f"cannot {what}: the row breaks a rule of the schema ({reason(e)})") from None
    except SQLAlchemyError as e:
        raise FeedbackStoreError(f"cannot {what}: {reason(e)}") from None


def reason(e: SQLAlchemyError) -> str:
    """The driver's message on one line."""
    orig = getattr(e, "orig", None) or e
    return " ".join(str(orig).split()) or type(orig).__name__


# --------------------------------------------------------------------------------------------- schema


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out (SQLite keeps no zone: what it stores is UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else _utc(value)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else _utc(value)


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _feedback_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "feedback", metadata,
        sa.Column("id", sa.String(36), primary_key=True),  # a UUID, canonical form
        sa.Column("created_at", UtcDateTime(), nullable=False, index=True),
        sa.Column("source", sa.String(8), sa.CheckConstraint("source IN ('demo', 'api')"), nullable=False),
        sa.Column("session", sa.String(SESSION_MAX), nullable=True, index=True),
        sa.Column("label", sa.SmallInteger, sa.CheckConstraint("label BETWEEN 0 AND 9"), nullable=False),
        sa.Column("predicted", sa.SmallInteger, sa.CheckConstraint("predicted BETWEEN 0 AND 9"), nullable=True),
        sa.Column("status", sa.String(16), sa.CheckConstraint("status IN ('ok', 'empty', 'not_a_digit')"),
                  nullable=False),
        sa.Column("probabilities", sa.Text, nullable=False),  # JSON: ten floats
        sa.Column("model", sa.String(200), nullable=False, index=True),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("image", sa.LargeBinary, nullable=False),
        sa.Column("model_input", sa.LargeBinary, nullable=False),  # 784 bytes: the 28x28 uint8 image, row-major
    )  # fmt: skip


def _v1(conn: Connection) -> None:
    """The feedback table as version 1 made it (later migrations alter it; this step never changes)."""
    _feedback_table(sa.MetaData()).create(conn)


Migration = tuple[int, Callable[[Connection], None]]
MIGRATIONS: tuple[Migration, ...] = ((1, _v1),)
SCHEMA_VERSION = MIGRATIONS[-1][0]

FEEDBACK = _feedback_table(sa.MetaData())  # the current schema, for queries
VERSIONS = sa.Table(
    "schema_version", sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UtcDateTime(), nullable=False),
)  # fmt: skip


def migrate(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the migrations the database lacks, in order, in one transaction; the versions applied (none: it was
    up to date). Safe when several processes call it at once (see the notes at the top of this module)."""
    with connection(engine, "open it", write=True) as conn:  # SQLite: the write lock is held from here
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        VERSIONS.create(conn, checkfirst=True)
        have = set(conn.execute(sa.select(VERSIONS.c.version)).scalars())
        known = {v for v, _ in migrations}
        if have - known:
            raise FeedbackStoreError(f"the feedback database is at schema version {max(have)}, newer than this "
                                     f"digitlab knows ({max(known)}): upgrade digitlab")  # fmt: skip
        applied = []
        for version, step in sorted(migrations, key=lambda m: m[0]):
            if version not in have:
                step(conn)
                conn.execute(sa.insert(VERSIONS).values(version=version, applied_at=datetime.now(timezone.utc)))
                applied.append(version)
        return applied


def insert_ignoring_duplicates(dialect: str) -> Any:
    """INSERT INTO feedback ... ON CONFLICT (id) DO NOTHING RETURNING id, in the dialect's words (a row back:
    inserted; none: the id was there; the drivers' rowcount is not reliable for this)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(FEEDBACK).on_conflict_do_nothing(index_elements=["id"]).returning(FEEDBACK.c.id)
