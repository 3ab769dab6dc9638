"""Feedback store: the labels users give to what the model saw, with its answer; stats, export and import."""

# Usage (the API and the demo add rows; a fine-tuner reads them):
#
#     store = FeedbackStore.open("sqlite:///feedback.db")  # postgresql+psycopg://USER@HOST/DB; None: default_url()
#     [p] = predictor.predict(png_bytes)
#     row_id = store.add(image=png_bytes, model_input=p.input, label=7, predicted=p.digit, status=p.status,
#                        probabilities=p.probabilities, model="fast", source="demo", session="3f2a...")
#     for r in store.rows(session="3f2a..."): r.model_input, r.label  # (28, 28) uint8, 0-9
#     store.stats(); store.delete(row_id); store.export("out/"); store.import_from("out/")
#
# * A row: the image as the user sent it (its bytes and media type, never re-encoded: a JPEG stays the JPEG it
#   was, so nothing is lost and a better preprocessing can be re-run on it), the 28x28 uint8 image the model saw,
#   the model's answer (the digit, or null when it refused, with its status and ten probabilities), the label,
#   the model's run id, the UTC time, where it came from ("demo" or "api") and an optional anonymous session
#   id. No IP address or other identity.
# * Export writes DIR/<label>/<id>.png, the 28x28 the model saw (MNIST format: what `--data DIR` trains on:
#   digitlab's folder reader only resizes, so a raw canvas there would be a dark-on-white, uncentred digit),
#   and DIR/feedback.jsonl, every field of every row (the images in base64): what import reads back, by id.
#   The database, URLs and schema are digitlab.data.feedback_db's.

from __future__ import annotations

import base64
import io
import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from digitlab.core.atomic import storage_error
from digitlab.core.errors import DataError
from digitlab.data.feedback_db import (
    FEEDBACK,
    SESSION_MAX,
    FeedbackStoreError,
    InvalidFeedback,
    connection,
    default_url,
    insert_ignoring_duplicates,
    migrate,
    open_engine,
    shown_url,
)

__all__ = ["MANIFEST", "FeedbackRecord", "FeedbackStats", "FeedbackStore", "FeedbackStoreError", "InvalidFeedback",
           "ModelStats", "default_url", "make_record", "read_export", "shown_url"]  # fmt: skip

SOURCES = ("demo", "api")
STATUSES = ("ok", "empty", "not_a_digit")  # the model's answer: a digit ("ok"), or why it gave none
IMAGE_SIDE = 28
MANIFEST = "feedback.jsonl"
EXPORT_FORMAT = {"format": "digitlab-feedback", "version": 1}  # the manifest's first line


@dataclass(frozen=True)
class FeedbackRecord:
    """One stored row. `model_input` is the (28, 28) uint8 image the model saw; `image` the bytes as sent."""

    id: str
    created_at: datetime
    source: str
    session: str | None
    label: int
    predicted: int | None
    status: str
    probabilities: list[float]
    model: str
    media_type: str
    image: bytes = field(repr=False)
    model_input: np.ndarray = field(repr=False, compare=False)

    @property
    def agreed(self) -> bool:
        """The model's answer was the user's label."""
        return self.predicted == self.label

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at, "source": self.source, "session": self.session,
                "label": self.label, "predicted": self.predicted, "status": self.status,
                "probabilities": json.dumps(self.probabilities), "model": self.model, "media_type": self.media_type,
                "image": self.image, "model_input": self.model_input.tobytes()}  # fmt: skip

    @classmethod
    def from_row(cls, row: Any) -> FeedbackRecord:
        m = row._mapping
        pixels = np.frombuffer(bytes(m["model_input"]), np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)
        return cls(id=m["id"], created_at=m["created_at"], source=m["source"], session=m["session"],
                   label=m["label"], predicted=m["predicted"], status=m["status"],
                   probabilities=json.loads(m["probabilities"]), model=m["model"], media_type=m["media_type"],
                   image=bytes(m["image"]), model_input=pixels)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The manifest line of an export: every field, the images in base64."""
        return {"id": self.id, "created_at": self.created_at.isoformat(), "source": self.source,
                "session": self.session, "label": self.label, "predicted": self.predicted, "status": self.status,
                "probabilities": self.probabilities, "model": self.model, "media_type": self.media_type,
                "image": base64.b64encode(self.image).decode(),
                "model_input": base64.b64encode(self.model_input.tobytes()).decode()}  # fmt: skip


def make_record(*, image: bytes, model_input: np.ndarray | bytes, label: int, predicted: int | None,
                probabilities: Sequence[float], model: str, source: str, status: str | None = None,
                session: str | None = None, media_type: str | None = None, id: str | None = None,
                created_at: datetime | None = None) -> FeedbackRecord:  # fmt: skip
    """A checked FeedbackRecord; InvalidFeedback (one line) for anything the store refuses. `status` defaults to
    "ok" with a digit and "not_a_digit" without; `media_type` is read from the image's header when not given."""
    if not _is_digit(label):
        raise InvalidFeedback(f"label must be a digit 0-9, not {label!r}")
    if predicted is not None and not _is_digit(predicted):
        raise InvalidFeedback(f"predicted must be a digit 0-9 or None, not {predicted!r}")
    status = status or ("ok" if predicted is not None else "not_a_digit")
    if status not in STATUSES or (status == "ok") != (predicted is not None):
        raise InvalidFeedback(f"status {status!r} with predicted {predicted!r}: 'ok' comes with a digit, "
                              "'empty' and 'not_a_digit' with none")  # fmt: skip
    probs = [float(p) for p in probabilities]
    if len(probs) != 10 or not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs):
        raise InvalidFeedback("probabilities must be ten numbers in [0, 1]")
    if source not in SOURCES:
        raise InvalidFeedback(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    if session is not None and not (isinstance(session, str) and 0 < len(session) <= SESSION_MAX
                                    and session.isprintable()):  # fmt: skip
        raise InvalidFeedback(f"session must be 1-{SESSION_MAX} printable characters")
    if not isinstance(model, str) or not 0 < len(model) <= 200:
        raise InvalidFeedback("model must be the run id (1-200 characters)")
    if not isinstance(image, (bytes, bytearray)) or not image:
        raise InvalidFeedback("image must be the bytes of the image as sent")
    return FeedbackRecord(id=str(uuid.uuid4()) if id is None else _check_id(id),
                          created_at=datetime.now(timezone.utc) if created_at is None else created_at,
                          source=source, session=session, label=int(label),
                          predicted=None if predicted is None else int(predicted), status=status,
                          probabilities=probs, model=model, media_type=media_type or sniff_media_type(image),
                          image=bytes(image), model_input=_pixels(model_input))  # fmt: skip


def sniff_media_type(data: bytes) -> str:
    """The media type of image bytes from their header (application/octet-stream when Pillow cannot tell)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.get_format_mimetype() or "application/octet-stream"
    except Exception:
        return "application/octet-stream"


def _pixels(model_input: np.ndarray | bytes) -> np.ndarray:
    raw = isinstance(model_input, (bytes, bytearray))
    a = np.frombuffer(model_input, np.uint8) if raw else np.asarray(model_input)
    if a.size != IMAGE_SIDE * IMAGE_SIDE or a.dtype != np.uint8 or (not raw and a.shape != (IMAGE_SIDE, IMAGE_SIDE)):
        raise InvalidFeedback(f"model_input must be the 28x28 uint8 image the model saw, not {a.dtype} {a.shape}")
    return np.ascontiguousarray(a.reshape(IMAGE_SIDE, IMAGE_SIDE)).copy()


def _is_digit(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 0 <= int(x) <= 9


def _check_id(value: Any) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise InvalidFeedback(f"id must be a UUID, not {value!r}") from None


# --------------------------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class ModelStats:
    model: str
    count: int
    agreed: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.count if self.count else None


@dataclass(frozen=True)
class FeedbackStats:
    """Counts by label (all ten, zeros included) and by model, and how often the model's answer was the label."""

    total: int
    agreed: int
    by_label: dict[int, int]
    agreed_by_label: dict[int, int]
    by_model: list[ModelStats]

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.total if self.total else None


# --------------------------------------------------------------------------------------------- the store


class FeedbackStore:
    """One feedback database. Thread-safe (a connection pool); many processes may open the same one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str | os.PathLike[str] | None = None, *, create: bool = True) -> FeedbackStore:
        """The store at `url` (default_url() when None; a plain path is a SQLite file), migrated to the current
        schema. `create=False`: a SQLite file that does not exist is an error, not a new empty store."""
        url = default_url() if url is None else os.fspath(url)
        engine = open_engine(url, create=create)
        try:
            migrate(engine)
        except FeedbackStoreError as e:
            engine.dispose()
            raise FeedbackStoreError(f"feedback database {shown_url(url)}: {e}") from None
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL without its password."""
        return self.engine.url.render_as_string(hide_password=True)

    def add(self, **fields: Any) -> str:
        """Store one row (the keyword arguments of `make_record`); its id, once it is committed."""
        record = make_record(**fields)
        with self._connect("store the feedback", write=True) as conn:
            conn.execute(sa.insert(FEEDBACK).values(record.to_row()))
        return record.id

    def add_records(self, records: Iterable[FeedbackRecord]) -> tuple[int, int]:
        """Insert records with their own ids, skipping ids already stored, in one transaction (all or none);
        (added, already there)."""
        added = skipped = 0
        with self._connect("import the feedback", write=True) as conn:
            insert = insert_ignoring_duplicates(conn.dialect.name)
            for r in records:
                if conn.execute(insert.values(r.to_row())).first() is not None:  # RETURNING: none when skipped
                    added += 1
                else:
                    skipped += 1
        return added, skipped

    def delete(self, row_id: str) -> bool:
        """Remove a row; False when there is none with that id (a malformed id included)."""
        try:
            key = _check_id(row_id)
        except InvalidFeedback:
            return False
        with self._connect("delete the feedback", write=True) as conn:
            return conn.execute(sa.delete(FEEDBACK).where(FEEDBACK.c.id == key)).rowcount > 0

    def get(self, row_id: str) -> FeedbackRecord | None:
        try:
            key = _check_id(row_id)
        except InvalidFeedback:
            return None
        with self._connect("read the feedback") as conn:
            row = conn.execute(sa.select(FEEDBACK).where(FEEDBACK.c.id == key)).first()
        return None if row is None else FeedbackRecord.from_row(row)

    def rows(self, *, model: str | None = None, session: str | None = None) -> Iterator[FeedbackRecord]:
        """Every row, oldest first (or those of one model, or of one session), streamed 500 rows at a time."""
        query = sa.select(FEEDBACK).order_by(FEEDBACK.c.created_at, FEEDBACK.c.id)
        if model is not None:
            query = query.where(FEEDBACK.c.model == model)
        if session is not None:
            query = query.where(FEEDBACK.c.session == session)
        with self._connect("read the feedback") as conn:
            for row in conn.execution_options(yield_per=500).execute(query):
                yield FeedbackRecord.from_row(row)

    def count(self) -> int:
        with self._connect("count the feedback") as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(FEEDBACK)).scalar_one())

    def stats(self) -> FeedbackStats:
        agree = sa.func.sum(sa.case((FEEDBACK.c.predicted == FEEDBACK.c.label, 1), else_=0))
        with self._connect("read the feedback statistics") as conn:  # one snapshot for both queries
            labels = conn.execute(sa.select(FEEDBACK.c.label, sa.func.count(), agree).group_by(FEEDBACK.c.label))
            per_label = {int(d): (int(n), int(a or 0)) for d, n, a in labels}
            models = conn.execute(sa.select(FEEDBACK.c.model, sa.func.count(), agree).group_by(FEEDBACK.c.model)
                                  .order_by(FEEDBACK.c.model)).all()  # fmt: skip
        counts = {d: per_label.get(d, (0, 0)) for d in range(10)}
        return FeedbackStats(total=sum(n for n, _ in counts.values()), agreed=sum(a for _, a in counts.values()),
                             by_label={d: n for d, (n, _) in counts.items()},
                             agreed_by_label={d: a for d, (_, a) in counts.items()},
                             by_model=[ModelStats(m, int(n), int(a or 0)) for m, n, a in models])  # fmt: skip

    # ------------------------------------------------------------------------------------------- export / import

    def export(self, out: str | Path) -> int:
        """Write every row to `out` (a new or empty folder) as described at the top; the number of rows."""
        from PIL import Image

        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise DataError(f"{out} already exists and is not an empty folder; choose a new one")
        manifest, tmp, n = out / MANIFEST, out / f".{MANIFEST}.tmp", 0
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", encoding="utf-8") as f:
                f.write(json.dumps(EXPORT_FORMAT) + "\n")
                for r in self.rows():
                    (out / str(r.label)).mkdir(exist_ok=True)
                    Image.fromarray(r.model_input, "L").save(out / str(r.label) / f"{r.id}.png")
                    f.write(json.dumps(r.to_json()) + "\n")
                    n += 1
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, manifest)  # last: a folder without its manifest is an export that did not finish
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise storage_error(manifest if e.filename is None else e.filename, e) from None
        return n

    def import_from(self, source: str | Path) -> tuple[int, int]:
        """Add the rows of an export folder, or of another store (a database URL), keeping their ids; rows
        already here are skipped, so importing twice adds nothing. (added, already there)."""
        if "://" in str(source):
            with FeedbackStore.open(str(source), create=False) as other:
                return self.add_records(other.rows())
        return self.add_records(read_export(Path(source)))

    def _connect(self, what: str, *, write: bool = False) -> AbstractContextManager[Connection]:
        return connection(self.engine, what, write=write)


def read_export(folder: Path) -> Iterator[FeedbackRecord]:
    """The records of an export folder's manifest, each checked as `add` checks it (DataError naming the line)."""
    manifest = folder / MANIFEST
    if not folder.is_dir():
        raise DataError(f"no such folder: {folder}")
    if not manifest.is_file():
        raise DataError(f"{folder}: no {MANIFEST} in it: not a feedback export (`digitlab feedback export`)")
    with manifest.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
                if number == 1:
                    if obj != EXPORT_FORMAT:
                        raise InvalidFeedback(f"not a feedback export of a known version (first line {line.strip()})")
                    continue
                yield _record_from_json(obj)
            except (ValueError, TypeError, KeyError, InvalidFeedback) as e:
                why = f"missing field {e}" if isinstance(e, KeyError) else " ".join(str(e).split())
                raise DataError(f"{manifest}, line {number}: {why}") from None


def _record_from_json(obj: dict[str, Any]) -> FeedbackRecord:
    created = datetime.fromisoformat(obj["created_at"])
    return make_record(id=obj["id"], created_at=created if created.tzinfo else created.replace(tzinfo=timezone.utc),
                       source=obj["source"], session=obj["session"], label=obj["label"], predicted=obj["predicted"],
                       status=obj["status"], probabilities=obj["probabilities"], model=obj["model"],
                       media_type=obj["media_type"], image=base64.b64decode(obj["image"], validate=True),
                       model_input=base64.b64decode(obj["model_input"], validate=True))  # fmt: skip
