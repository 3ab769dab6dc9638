"""Streamlit web app (`digitlab app RUN`): draw or upload digits; see the answer, its probabilities, and why."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from digitlab.core.formatting import pct
from digitlab.core.jsonfile import read_json_lenient
from digitlab.core.rundir import default_run
from digitlab.serving.demo_drawing import (
    CANVAS_PX,
    INK,
    STROKE_DEFAULT,
    canvas_to_gray,
    drawing_objects,
    drawing_to_gray,
)
from digitlab.serving.demo_feedback import feedback_widget, png_bytes
from digitlab.serving.demo_views import (
    EMPTY_HINT,
    UPLOAD_MB,
    ZOOM,
    check_upload,
    draw_boxes,
    enlarge,
    favicon,
    friendly_error,
    integrated_gradients,
    model_facts,
    per_class_rows,
    probability_chart,
    saliency_overlay,
    verdict,
)

if TYPE_CHECKING:  # heavy imports stay out of module import: the script imports torch only to load the model
    from digitlab.inference.predict import Prediction, Predictor, ReadResult

RUN_ENV = "DIGITLAB_APP_RUN"  # `digitlab app RUN` passes the run directory to the script through this variable
TTA_ENV = "DIGITLAB_APP_TTA"  # "1": `digitlab app --tta`; else no test-time augmentation, as `digitlab serve`
PEN, ERASER = ":material/edit: Pen", ":material/ink_eraser: Eraser"
PAPER = "#ffffff"
FIGURES = (("confusion", "Confusion matrix"), ("reliability", "Reliability diagram"),
           ("curves", "Training curves"), ("errors", "Misclassified test digits"))  # fmt: skip
CSS = """<style>
.dl-digit {font-size: 5.5rem; font-weight: 700; line-height: 1; margin: 0.2rem 0 0.4rem 0;}
.dl-number {font-size: 3.5rem; font-weight: 700; line-height: 1.1; letter-spacing: 0.15em;}
.dl-sure {font-size: 1.1rem;}
[data-testid="stMainBlockContainer"] {padding-top: 2.5rem;}
</style>"""

log = logging.getLogger("digitlab.app")

# --------------------------------------------------------------------------------------------- canvas pixels


# --------------------------------------------------------------------------------------------- saliency


# --------------------------------------------------------------------------------------------- formatting


def run_from_env() -> Path:
    """The run the app shows: $DIGITLAB_APP_RUN (set by `digitlab app`), else the bundled model."""
    value = os.environ.get(RUN_ENV)
    if value:
        return Path(value)
    return default_run()


# --------------------------------------------------------------------------------------------- the page


def _load_predictor(run: str, tta: bool) -> Predictor:
    from digitlab.inference.predict import Predictor

    return Predictor.from_run(run, tta=tta)  # the torch backend: its model also gives the saliency


def render() -> None:
    """The whole page; Streamlit reruns it on every interaction (the model is loaded once per process)."""
    import streamlit as st

    from digitlab.core.errors import DigitlabError

    st.set_page_config(page_title="digitlab — draw a digit", page_icon=favicon(), layout="centered")
    st.markdown(CSS, unsafe_allow_html=True)
    try:
        run = run_from_env()
        tta = os.environ.get(TTA_ENV) == "1"
        predictor = st.cache_resource(show_spinner="loading the model…")(_load_predictor)(str(run), tta)
    except DigitlabError as e:
        st.error(f"Cannot load the model: {e}")
        st.stop()
    info = predictor.info
    st.markdown("## What digit is this?")
    st.caption(f"model **{info.get('model') or '?'}** from run `{info.get('run')}` · test accuracy "
               f"{pct(info.get('test_accuracy'))}")  # fmt: skip
    draw_tab, upload_tab, model_tab = st.tabs([":material/draw: Draw", ":material/photo_camera: Upload",
                                               ":material/monitoring: Model"])  # fmt: skip
    with draw_tab:  # fragments: a stroke or an upload reruns its own tab only, not the whole page
        st.fragment(_draw)(st, predictor)
    with upload_tab:
        st.fragment(_upload)(st, predictor)
    with model_tab:
        _model(st, run, info)


def _canvas_key(st: Any) -> str:
    return f"canvas-{st.session_state.setdefault('canvas_gen', 0)}"


def _clear(st: Any) -> None:
    """A new widget key: the canvas is rebuilt empty and its old drawing and pixels are gone for good."""
    st.session_state.canvas_gen = st.session_state.get("canvas_gen", 0) + 1
    st.session_state.canvas_init = None


def _undo(st: Any) -> None:
    """Rebuild the canvas (a new key) from its last drawing without the last stroke."""
    objects = drawing_objects(st.session_state.get("canvas_drawing"))
    st.session_state.canvas_gen = st.session_state.get("canvas_gen", 0) + 1
    st.session_state.canvas_init = {"objects": objects[:-1]} if len(objects) > 1 else None


def _draw(st: Any, predictor: Predictor) -> None:
    from digitlab.serving.demo_canvas import st_canvas

    # One row on a desktop; on a phone it wraps to buttons, then the slider, so the answer sits under the canvas.
    with st.container(horizontal=True, gap="xsmall", vertical_alignment="bottom"):
        tool = st.segmented_control("Tool", [PEN, ERASER], default=PEN, key="tool", label_visibility="collapsed")
        st.button("Undo", icon=":material/undo:", on_click=_undo, args=(st,), key="undo")
        st.button("Clear", icon=":material/delete:", on_click=_clear, args=(st,), key="clear")
        st.slider("Stroke width", 6, 40, STROKE_DEFAULT, key="stroke", width=220)
    left, right = st.columns([1, 1], gap="medium")
    with left:
        result = st_canvas(stroke_width=int(st.session_state.get("stroke", STROKE_DEFAULT)),
                           stroke_color=PAPER if tool == ERASER else INK, background_color=PAPER,
                           height=CANVAS_PX, width=CANVAS_PX, drawing_mode="freedraw",
                           initial_drawing=st.session_state.get("canvas_init"), return_image_data=True,
                           key=_canvas_key(st))  # fmt: skip
    drawing = result.json_data
    st.session_state.canvas_drawing = drawing
    start = time.perf_counter()
    rgba = result.image_data
    if rgba is not None and drawing_objects(drawing):
        gray = canvas_to_gray(rgba)
    elif drawing_objects(drawing):  # rebuilt from JSON (Undo): no pixels until the next stroke
        gray = drawing_to_gray(drawing)
    else:
        gray = None
    with right:
        if gray is None:
            st.info(EMPTY_HINT)
            return
        pred = predictor.predict(gray)[0]
        _show_answer(st, pred)
    drawn = result.image_bytes if rgba is not None else png_bytes(gray)  # the canvas's PNG, as it sent it
    feedback_widget(st, pred, drawn, str(predictor.info.get("run")), "draw")
    _show_why(st, pred, predictor, start)


def _show_answer(st: Any, pred: Prediction) -> None:
    """The big digit, how sure, and the probability chart (or the empty / not-a-digit / error message)."""
    kind, text = verdict(pred)
    if kind == "ok":
        st.markdown(f'<div class="dl-digit" data-testid="dl-digit">{pred.digit}</div>'
                    f'<div class="dl-sure">{text}</div>', unsafe_allow_html=True)  # fmt: skip
    elif kind == "empty":
        st.info(text)
    elif kind == "not_a_digit":
        st.warning(text)
    else:
        st.error(text)
    if pred.probabilities:
        st.vega_lite_chart(probability_chart(pred.probabilities, pred.digit), width="stretch")
        if kind == "ok":
            st.caption("calibrated probabilities of the ten digits")


def _show_why(st: Any, pred: Prediction, predictor: Predictor, start: float | None = None) -> None:
    """The 28x28 image the model saw and, for a digit, the integrated-gradients saliency overlay."""
    if pred.input is None or pred.status in ("empty", "error"):
        return
    with st.container(horizontal=True, gap="small"):  # side by side, even on a phone (2 x 168 px + 16 px)
        st.image(enlarge(pred.input), caption="what the model sees (28×28)", width=28 * ZOOM)
        if pred.status == "ok" and predictor.model is not None:
            attribution = integrated_gradients(predictor.model, pred.input, int(pred.digit), lock=predictor.model_lock)
            st.image(saliency_overlay(pred.input, attribution), width=28 * ZOOM,
                     caption=f"why: red ink argued for {pred.digit}, blue against")  # fmt: skip
    if start is not None:
        ms = (time.perf_counter() - start) * 1000
        st.caption(f'<span data-testid="dl-timing">answered in {ms:.0f} ms</span>', unsafe_allow_html=True)


def _upload(st: Any, predictor: Predictor) -> None:
    from digitlab.data.decode import load_image

    st.write("A photo or scan of one digit, or of a number written on one line.")
    up = st.file_uploader("Photo or scan", type=None, max_upload_size=UPLOAD_MB, key="upload",
                          label_visibility="collapsed")  # fmt: skip
    if up is None:
        return
    try:  # whatever arrives, a person sees a sentence, never a stack trace
        data = up.getvalue()
        problem = check_upload(data, up.name)
        if problem:
            st.error(problem)
            return
        result = predictor.read(data)
        if result.status == "error":
            st.error(friendly_error(result.message))
            return
        if result.status == "empty":
            st.info("No digit found in that image. Try a photo with dark ink on light paper, filling the frame.")
            return
        _show_reading(st, result, load_image(data), predictor)
        digits = [d for d in result.digits if d.status != "empty"]
        if len(digits) == 1:  # one digit, one label (a number's digits are not labelled one by one)
            feedback_widget(st, digits[0].prediction, data, str(predictor.info.get("run")), "upload")
    except Exception as e:  # noqa: BLE001 (a demo must survive any file)
        log.exception("upload %r failed", getattr(up, "name", "?"))
        st.error(friendly_error(" ".join(str(e).split()) or type(e).__name__))


def _show_reading(st: Any, result: ReadResult, image: Image.Image, predictor: Predictor) -> None:
    digits = [d for d in result.digits if d.status != "empty"]
    if len(digits) == 1:
        left, right = st.columns([1, 1], gap="medium")
        with left:
            st.image(draw_boxes(image, digits), caption="your image", width="stretch")
        with right:
            _show_answer(st, digits[0].prediction)
        _show_why(st, digits[0].prediction, predictor)
        return
    st.markdown(f'<div class="dl-number" data-testid="dl-number">{result.text}</div>', unsafe_allow_html=True)
    unsure = sum(d.status != "ok" for d in digits)
    st.caption(f"{len(digits)} digits read left to right" + (f"; {unsure} marked ? are not digits" if unsure else ""))
    st.image(draw_boxes(image, digits), caption="each box is one digit", width="stretch")
    with st.container(horizontal=True, gap="small"):  # what the model saw of each digit, wrapping on a phone
        for d in digits:
            if d.prediction.input is not None:
                label = f"{d.char} · {d.confidence:.0%}" if d.digit is not None else "? · not a digit"
                st.image(enlarge(d.prediction.input, 3), caption=label, width=84)


def _model(st: Any, run: Path, info: dict[str, Any]) -> None:
    facts = model_facts(run)
    metrics = read_json_lenient(run / "metrics.json")
    for col, label, key in zip(st.columns(4), ("Test accuracy", "Model", "Preset", "Parameters"),
                               ("test accuracy", "model", "preset", "parameters"), strict=True):  # fmt: skip
        col.metric(label, facts[key])
    if facts["test accuracy"] == "—":
        st.info(f"This run has no test results yet: run `digitlab evaluate {run}` to add them.")
    else:
        st.caption(f"{facts['test images']} test images · 95% CI {facts['95% CI']} · calibration error (ECE) "
                   f"{facts['ECE']} at temperature {facts['temperature']}")  # fmt: skip
    rows = per_class_rows(metrics)
    if rows:
        st.subheader("Per digit")
        fmt = {k: st.column_config.NumberColumn(k, format="percent") for k in ("precision", "recall", "F1")}
        st.dataframe(rows, hide_index=True, column_config=fmt, width="stretch")
    plots = run / "plots"
    shown = [(n, t) for n, t in FIGURES if (plots / f"{n}.png").is_file()]
    for name, title in shown:
        st.subheader(title)
        st.image(str(plots / f"{name}.png"), width="stretch")
    if not shown:
        st.caption("No figures in this run's plots/ folder.")
    with st.expander("Training parameters"):
        st.json(read_json_lenient(run / "config.json") or {"config.json": "missing"}, expanded=True)
        st.caption(f"run directory: {run}")
        st.json({k: v for k, v in info.items() if k not in ("path",)}, expanded=False)


if __name__ == "__main__":  # `streamlit run` executes this file as __main__
    render()
