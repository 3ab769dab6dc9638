"""The demo's feedback under each answer: Right / Wrong — it's a 0-9, the opt-in, the counts, the store write."""

# Nothing is stored unless the visitor ticks "Help improve this model: store my drawings" (off by default;
# until then the buttons are greyed out). A row is what `digitlab serve`'s POST /v1/feedback stores, with
# source "demo": the image as drawn (the canvas's PNG) or as uploaded (its bytes), the 28x28 the model saw,
# its answer and probabilities, the label, the run id, the time, and an anonymous per-browser-tab id (a
# random UUID in st.session_state). No IP address. One label per image: a second tap on the same drawing
# changes nothing; the next stroke is a new image.
#
# The store: $DIGITLAB_APP_FEEDBACK_DB, which `digitlab app` sets to the store it opened (--feedback-db URL,
# $DIGITLAB_FEEDBACK_DB, else the default file) or to "" (--no-feedback: no widget). Unset (the default store
# could not be made, or `streamlit run app.py`): digitlab.data.feedback_db.default_url(). A store that cannot be
# opened or written leaves the demo working, with one line saying so.

from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from digitlab.core.errors import DigitlabError

if TYPE_CHECKING:
    from digitlab.data.feedback_store import FeedbackStore
    from digitlab.inference.predict import Prediction

STORE_ENV = "DIGITLAB_APP_FEEDBACK_DB"
OPT_IN = "Help improve this model: store my drawings"
UNAVAILABLE = "Feedback is unavailable: the feedback store cannot be opened."
SESSION, OPTED_IN, COUNT, DONE, ERROR = "fb_session", "fb_opted_in", "fb_count", "fb_done", "fb_error"
PLACES = ("draw", "upload")  # one widget per tab, keys fb-<place>-...
CSS = """<style>
.st-key-fb-draw-verdict button, .st-key-fb-draw-digits button, .st-key-fb-upload-verdict button,
.st-key-fb-upload-digits button {min-height: 2.75rem; min-width: 2.75rem; font-size: 1.2rem; padding: 0 0.6rem;}
</style>"""  # a fingertip's target (44 px, as phone guidelines ask); the digits' row wraps on a phone

log = logging.getLogger("digitlab.app")
State = MutableMapping[str, Any]


@dataclass(frozen=True)
class Answer:
    """One answer the visitor can label: the image as drawn or uploaded, and what the model made of it."""

    image: bytes
    prediction: Prediction
    model: str  # the run id, as the API names it

    @property
    def key(self) -> str:
        """Which image the buttons label (the same drawing rerun keeps its key; a new stroke changes it)."""
        return hashlib.sha256(self.image).hexdigest()[:24]


@dataclass(frozen=True)
class StoreHandle:
    """The store the demo writes to, or why there is none (`problem`; None for both: feedback is off)."""

    store: FeedbackStore | None
    problem: str | None = None


def png_bytes(gray: np.ndarray) -> bytes:
    """A uint8 image as PNG bytes (the drawing, when the canvas has sent its strokes but not its pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(gray, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def store_url() -> str | None:
    """The store's URL ($DIGITLAB_APP_FEEDBACK_DB, else the default); None: feedback is off."""
    value = os.environ.get(STORE_ENV)
    if value is None:
        from digitlab.data.feedback_db import default_url

        return default_url()
    return value or None


def open_store(url: str | None) -> StoreHandle:
    """The store at `url`, opened and migrated; a handle saying why not when it cannot be."""
    if url is None:
        return StoreHandle(None)
    from digitlab.data.feedback_store import FeedbackStore, shown_url

    try:
        return StoreHandle(FeedbackStore.open(url))
    except DigitlabError as e:
        log.warning("feedback store %s: %s", shown_url(url), " ".join(str(e).split()))
        return StoreHandle(None, UNAVAILABLE)


def session_id(state: State) -> str:
    """This browser tab's anonymous id: a random UUID, made on first use."""
    if SESSION not in state:
        state[SESSION] = str(uuid.uuid4())
    return str(state[SESSION])


def record(store: FeedbackStore, state: State, answer: Answer, label: int) -> str | None:
    """Store `answer` with `label` when the visitor has opted in and has not labelled this image yet: the row's
    id, else None. A store that fails leaves a one-line message in state[ERROR]."""
    done = state.setdefault(DONE, {})
    if not state.get(OPTED_IN) or answer.key in done:
        return None
    p = answer.prediction
    try:
        row_id = store.add(image=answer.image, model_input=p.input, label=label, predicted=p.digit,
                           status=p.status, probabilities=p.probabilities, model=answer.model, source="demo",
                           session=session_id(state))  # fmt: skip
    except DigitlabError as e:
        log.warning("feedback not stored: %s", " ".join(str(e).split()))
        state[ERROR] = "Sorry, that could not be stored just now."
        return None
    done[answer.key] = label
    state[COUNT] = int(state.get(COUNT, 0)) + 1
    state.pop(ERROR, None)
    return row_id


def counts_line(state: State, total: int | None) -> str:
    """What this tab has contributed, and the store's total when it could be counted."""
    n = int(state.get(COUNT, 0))
    text = f"You have shared {n} drawing{'' if n == 1 else 's'} from this browser"
    return text + ("" if total is None else f" · {total:,} in the store")


def _sync_opt_in(state: State, key: str) -> None:
    """One choice for both tabs: ticking the box in one ticks it in the other."""
    state[OPTED_IN] = bool(state[key])
    for place in PLACES:
        other = f"fb-{place}-optin"
        if other != key and other in state:
            state[other] = state[OPTED_IN]


def _open_cached(url: str | None) -> StoreHandle:
    import streamlit as st

    return st.cache_resource(show_spinner=False)(open_store)(url)  # one store per process, as serve's workers


def feedback_widget(st: Any, pred: Prediction, image: bytes, model: str, place: str) -> None:
    """The feedback block under an answer (nothing for an empty canvas or an unreadable file)."""
    if pred.status not in ("ok", "not_a_digit") or pred.input is None:
        return
    handle = _open_cached(store_url())
    if handle.store is None:
        if handle.problem:
            st.caption(handle.problem)
        return
    state, answer, store = st.session_state, Answer(image, pred, model), handle.store
    st.markdown(CSS, unsafe_allow_html=True)
    key = f"fb-{place}-optin"
    if key not in state:
        state[key] = bool(state.get(OPTED_IN, False))
    st.checkbox(OPT_IN, key=key, on_change=_sync_opt_in, args=(state, key))
    opted_in = bool(state[key])
    labelled = state.get(DONE, {}).get(answer.key)
    if labelled is not None:
        st.success(f"Stored as a {labelled} — thank you.", icon=":material/check:")
    else:
        with st.container(horizontal=True, gap="small", vertical_alignment="center", key=f"fb-{place}-verdict"):
            if pred.status == "ok":
                st.button("Right", icon=":material/check:", key=f"fb-{place}-right", disabled=not opted_in,
                          on_click=record, args=(store, state, answer, int(pred.digit)))  # fmt: skip
            st.markdown("Wrong — it's a" if pred.status == "ok" else "It's a", width="content")
        with st.container(horizontal=True, gap="xsmall", key=f"fb-{place}-digits"):
            for d in range(10):
                st.button(str(d), key=f"fb-{place}-{d}", disabled=not opted_in,
                          on_click=record, args=(store, state, answer, d))  # fmt: skip
    if state.get(ERROR):
        st.warning(state[ERROR])
    try:
        total = store.count()
    except DigitlabError:
        total = None
    st.caption(("" if opted_in else "Tick the box to label your drawings. ") + counts_line(state, total))
