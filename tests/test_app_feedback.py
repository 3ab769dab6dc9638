"""The demo's feedback: what a tap stores (and only after opting in), the counts, an unavailable store; then the
whole page through Streamlit's AppTest: draw, opt in, "Wrong — it's a 7", upload, and the rows in SQLite."""

from __future__ import annotations

import base64
import io
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from digitlab.data.feedback_db import FeedbackStoreError
from digitlab.data.feedback_store import FeedbackStore
from digitlab.inference.predict import Prediction
from digitlab.serving import demo as app
from digitlab.serving import demo_feedback as app_feedback
from digitlab.serving.demo_drawing import canvas_to_gray
from digitlab.serving.demo_feedback import COUNT, DONE, ERROR, OPTED_IN, SESSION, Answer, record
from test_app import APP_SCRIPT, SHAPES, canvas_state, number_png, png_bytes, render_strokes, shown_digit


def prediction(digit: int | None = 3, seed: int = 0) -> Prediction:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(10)).tolist()
    pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    status = "ok" if digit is not None else "not_a_digit"
    return Prediction(digit=digit, probabilities=probs, confidence=probs[digit] if digit is not None else 0.0,
                      status=status, input=pixels)  # fmt: skip


@pytest.fixture
def store(tmp_path):
    with FeedbackStore.open(f"sqlite:///{tmp_path / 'feedback.db'}") as s:
        yield s


def drawing(seed: int = 0) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (280, 280, 4), dtype=np.uint8))


# --------------------------------------------------------------------------------------------- unit


def test_record_stores_every_field_of_the_answer(store):
    state = {OPTED_IN: True}
    pred, image = prediction(3), drawing()
    before = datetime.now(timezone.utc)
    row_id = record(store, state, Answer(image, pred, "fast"), 5)
    row = store.get(row_id)
    assert row is not None and store.count() == 1
    assert (row.label, row.predicted, row.status, row.model, row.source) == (5, 3, "ok", "fast", "demo")
    assert row.probabilities == pytest.approx(pred.probabilities) and row.image == image  # the bytes as drawn
    assert row.media_type == "image/png" and np.array_equal(row.model_input, pred.input)
    assert row.session == state[SESSION] and str(uuid.UUID(row.session)) == row.session  # a random UUID
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=timezone.utc)
    assert before - timedelta(seconds=1) <= created <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert state[COUNT] == 1 and ERROR not in state


def test_nothing_is_stored_without_opting_in(store):
    answer = Answer(drawing(), prediction(3), "fast")
    for state in ({}, {OPTED_IN: False}):
        assert record(store, state, answer, 3) is None
        assert COUNT not in state and SESSION not in state  # not even an id is made
    assert store.count() == 0


def test_one_label_per_image_and_the_counts(store):
    state = {OPTED_IN: True}
    first = Answer(drawing(0), prediction(7), "fast")
    assert record(store, state, first, 7) is not None
    assert record(store, state, first, 1) is None  # a second tap on the same drawing
    refused = Answer(drawing(1), prediction(None, seed=1), "fast")  # "not a digit": the label is the only digit
    assert record(store, state, refused, 4) is not None
    rows = list(store.rows(session=state[SESSION]))
    assert [(r.label, r.predicted, r.status) for r in rows] == [(7, 7, "ok"), (4, None, "not_a_digit")]
    assert state[DONE] == {first.key: 7, refused.key: 4} and state[COUNT] == 2
    line = app_feedback.counts_line(state, store.count())
    assert line == "You have shared 2 drawings from this browser · 2 in the store"
    assert app_feedback.counts_line({COUNT: 1}, None) == "You have shared 1 drawing from this browser"
    other = {OPTED_IN: True}  # another browser: its own id
    record(store, other, Answer(drawing(2), prediction(1), "fast"), 1)
    assert other[SESSION] != state[SESSION] and store.count() == 3


def test_a_store_that_fails_leaves_one_line_and_no_count():
    class Broken:
        def add(self, **fields):
            raise FeedbackStoreError("database is locked")

    state = {OPTED_IN: True}
    assert record(Broken(), state, Answer(drawing(), prediction(2), "fast"), 2) is None
    assert state[ERROR] == "Sorry, that could not be stored just now." and COUNT not in state
    assert state.get(DONE) == {}  # the visitor may tap again


def test_store_url_and_an_unopenable_store(monkeypatch, tmp_path):
    monkeypatch.delenv(app_feedback.STORE_ENV, raising=False)
    monkeypatch.setenv("DIGITLAB_FEEDBACK_DB", "sqlite:///x.db")
    assert app_feedback.store_url() == "sqlite:///x.db"  # the default store, as `digitlab serve`'s
    monkeypatch.setenv(app_feedback.STORE_ENV, "")
    assert app_feedback.store_url() is None  # --no-feedback
    monkeypatch.setenv(app_feedback.STORE_ENV, "sqlite:///y.db")
    assert app_feedback.store_url() == "sqlite:///y.db"
    assert app_feedback.open_store(None) == app_feedback.StoreHandle(None)
    (tmp_path / "file").write_text("")
    for url in (f"sqlite:///{tmp_path / 'file' / 'feedback.db'}", "mysql://u@h/db"):
        assert app_feedback.open_store(url) == app_feedback.StoreHandle(None, app_feedback.UNAVAILABLE)


def test_png_bytes_keeps_the_pixels():
    gray = canvas_to_gray(render_strokes(SHAPES["7"]))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(app_feedback.png_bytes(gray)))), gray)


# --------------------------------------------------------------------------------------------- AppTest


@pytest.fixture
def page(monkeypatch, tmp_path):
    """The app on the bundled model (it reads a drawn 7), storing into a new SQLite file."""
    from streamlit.testing.v1 import AppTest

    from digitlab.core.rundir import default_run

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    monkeypatch.setenv(app.RUN_ENV, str(default_run()))
    monkeypatch.setenv(app_feedback.STORE_ENV, url)
    return AppTest.from_file(str(APP_SCRIPT), default_timeout=60), url


def buttons(at, prefix: str) -> dict[str, bool]:
    """The feedback buttons shown (key -> disabled)."""
    return {b.key: b.disabled for b in at.button if b.key and b.key.startswith(prefix)}


def test_apptest_wrong_its_a_7_stores_a_row_after_opting_in(page, mnist):
    at, url = page
    at.run()
    state = canvas_state(SHAPES["7"])
    at.session_state["canvas-0"] = state
    at.run()
    assert not at.exception and len(at.tabs[0].get("image")) == 2  # the answer, with the saliency view
    shown = buttons(at, "fb-draw-")
    assert shown == {"fb-draw-right": True, **{f"fb-draw-{d}": True for d in range(10)}}  # greyed out
    optin = at.checkbox(key="fb-draw-optin")
    assert optin.value is False and optin.label == app_feedback.OPT_IN
    assert any("You have shared 0 drawings" in c.value for c in at.caption)
    at.checkbox(key="fb-draw-optin").check().run()
    assert not any(buttons(at, "fb-draw-").values())
    at.button(key="fb-draw-7").click().run()
    assert not at.exception
    assert any("Stored as a 7" in s.value for s in at.success) and not buttons(at, "fb-draw-")
    assert any("You have shared 1 drawing from this browser · 1 in the store" in c.value for c in at.caption)
    with FeedbackStore.open(url, create=False) as store:
        [row] = store.rows()
    drawn = base64.b64decode(state["drawing"]["data"].split(",", 1)[1])
    assert (row.label, row.source, row.model, row.session) == (7, "demo", "default", at.session_state[SESSION])
    assert row.image == drawn and row.media_type == "image/png"  # the canvas's PNG as it sent it
    assert row.predicted == 7 and row.status == "ok" and len(row.probabilities) == 10

    one, _ = number_png(mnist, [3])  # the opt-in holds on the Upload tab too
    at.file_uploader(key="upload").set_value(("three.png", one, "image/png"))
    at.run()
    assert at.checkbox(key="fb-upload-optin").value is True and not any(buttons(at, "fb-upload-").values())
    at.button(key="fb-upload-3").click().run()
    with FeedbackStore.open(url, create=False) as store:
        rows = list(store.rows(session=at.session_state[SESSION]))
    assert [r.label for r in rows] == [7, 3] and rows[1].image == one  # the bytes as uploaded


def test_apptest_feedback_unavailable_is_one_line(page, monkeypatch, tmp_path):
    at, _ = page
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(app_feedback.STORE_ENV, f"sqlite:///{tmp_path / 'file' / 'demo.db'}")
    at.run()
    at.session_state["canvas-0"] = canvas_state(SHAPES["7"])
    at.run()
    assert not at.exception and not buttons(at, "fb-")
    assert shown_digit(at) == "7"
    assert [c.value for c in at.caption if "Feedback" in c.value] == [app_feedback.UNAVAILABLE]
    assert len(at.tabs[0].get("image")) == 2  # the demo itself is unchanged


def test_apptest_no_feedback_shows_no_widget(page, monkeypatch):
    at, _ = page
    monkeypatch.setenv(app_feedback.STORE_ENV, "")  # `digitlab app --no-feedback`
    at.run()
    at.session_state["canvas-0"] = canvas_state(SHAPES["7"])
    at.run()
    assert not at.exception and not buttons(at, "fb-") and not any("Feedback" in c.value for c in at.caption)
