"""Streamlit web app (`digitlab app RUN`): draw or upload digits; see the answer, its probabilities, and why."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageColor, ImageDraw

from digitlab.core.formatting import DASH, num, pct
from digitlab.core.jsonfile import read_json_lenient
from digitlab.core.rundir import default_run
from digitlab.core.summary import run_facts
from digitlab.serving.demo_feedback import feedback_widget, png_bytes

if TYPE_CHECKING:  # heavy imports stay out of module import: the script imports torch only to load the model
    from torch import nn

    from digitlab.inference.predict import Prediction, Predictor, ReadDigit, ReadResult

RUN_ENV = "DIGITLAB_APP_RUN"  # `digitlab app RUN` passes the run directory to the script through this variable
TTA_ENV = "DIGITLAB_APP_TTA"  # "1": `digitlab app --tta`; else no test-time augmentation, as `digitlab serve`
CANVAS_PX = 280  # 10x MNIST: fits a 390 px phone screen with Streamlit's margins
STROKE_DEFAULT = 22  # a thick marker, like MNIST's ~2 px strokes on a 20 px digit
PEN, ERASER = ":material/edit: Pen", ":material/ink_eraser: Eraser"
INK, PAPER = "#000000", "#ffffff"
UPLOAD_MB = 20
ZOOM = 6  # the 28x28 images are shown at 168 px
FIGURES = (("confusion", "Confusion matrix"), ("reliability", "Reliability diagram"),
           ("curves", "Training curves"), ("errors", "Misclassified test digits"))  # fmt: skip
EMPTY_HINT = "Draw a digit in the box — the answer appears when you lift the pen."
NOT_A_DIGIT = "That doesn't look like a digit."
CSS = """<style>
.dl-digit {font-size: 5.5rem; font-weight: 700; line-height: 1; margin: 0.2rem 0 0.4rem 0;}
.dl-number {font-size: 3.5rem; font-weight: 700; line-height: 1.1; letter-spacing: 0.15em;}
.dl-sure {font-size: 1.1rem;}
[data-testid="stMainBlockContainer"] {padding-top: 2.5rem;}
</style>"""

log = logging.getLogger("digitlab.app")
_grad_lock = threading.Lock()

# --------------------------------------------------------------------------------------------- canvas pixels


def canvas_to_gray(rgba: np.ndarray) -> np.ndarray:
    """The canvas's RGBA export composited over white paper: uint8 (H, W), dark ink on white.

    The canvas's default background is transparent (ink only in alpha) and the eraser paints white, so
    compositing over white handles both: untouched and erased pixels become paper, pen strokes ink."""
    a = np.asarray(rgba, dtype=np.float32)
    if a.ndim == 2:
        return np.asarray(rgba, dtype=np.uint8)
    rgb, alpha = a[..., :3], (a[..., 3:4] / 255 if a.shape[-1] == 4 else np.ones_like(a[..., :1]))
    out = (rgb * alpha + 255 * (1 - alpha)) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _path_points(obj: dict[str, Any]) -> list[tuple[float, float]]:
    """Points along a Fabric.js freehand path (M, L and Q commands; curves sampled)."""
    pts: list[tuple[float, float]] = []
    for cmd in obj.get("path") or []:
        if not cmd:
            continue
        op, args = str(cmd[0]).upper(), [float(v) for v in cmd[1:]]
        if op in ("M", "L") and len(args) >= 2:
            pts.append((args[0], args[1]))
        elif op == "Q" and len(args) >= 4 and pts:
            (x0, y0), (cx, cy), (x1, y1) = pts[-1], args[:2], args[2:4]
            for t in np.linspace(0.25, 1, 4):
                s = 1 - t
                pts.append((s * s * x0 + 2 * s * t * cx + t * t * x1, s * s * y0 + 2 * s * t * cy + t * t * y1))
    return pts


_ORIGIN = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}


def _path_transform(obj: dict[str, Any], pts: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """(dx, dy, sx, sy) mapping path coordinates to canvas pixels, Fabric's way: the path's centre goes to the
    object's centre (its `left`/`top` seen through its origin; the box is the path's plus the stroke)."""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    sx, sy = float(obj.get("scaleX") or 1), float(obj.get("scaleY") or 1)
    if "left" not in obj or "top" not in obj:
        return 0.0, 0.0, 1.0, 1.0
    stroke = float(obj.get("strokeWidth") or 0)
    w = float(obj.get("width", max(xs) - min(xs))) + stroke
    h = float(obj.get("height", max(ys) - min(ys))) + stroke
    cx = float(obj["left"]) + (0.5 - _ORIGIN.get(str(obj.get("originX", "center")), 0.5)) * w * sx
    cy = float(obj["top"]) + (0.5 - _ORIGIN.get(str(obj.get("originY", "center")), 0.5)) * h * sy
    return cx - (min(xs) + max(xs)) / 2 * sx, cy - (min(ys) + max(ys)) / 2 * sy, sx, sy


def drawing_to_gray(drawing: dict[str, Any] | None, size: tuple[int, int] = (CANVAS_PX, CANVAS_PX)) -> np.ndarray:
    """Render a canvas's Fabric.js JSON (its freehand paths) as the canvas shows it: uint8 (H, W), ink on white.

    Used when the canvas has sent its drawing but no pixels yet (just after Undo rebuilt it from JSON)."""
    im = Image.new("L", size, 255)
    draw = ImageDraw.Draw(im)
    for obj in (drawing or {}).get("objects") or []:
        pts = _path_points(obj) if isinstance(obj, dict) else []
        if not pts:
            continue
        dx, dy, sx, sy = _path_transform(obj, pts)
        pts = [(x * sx + dx, y * sy + dy) for x, y in pts]
        try:
            rgb = ImageColor.getrgb(str(obj.get("stroke") or INK))
        except ValueError:
            rgb = (0, 0, 0)
        fill = 0 if sum(rgb[:3]) < 3 * 128 else 255
        width = max(1, round(float(obj.get("strokeWidth", STROKE_DEFAULT)) * (sx + sy) / 2))
        r = width / 2
        if len(pts) > 1:
            draw.line(pts, fill=fill, width=width, joint="curve")
        for x, y in (pts[0], pts[-1]):  # round caps
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    return np.asarray(im)


def drawing_objects(drawing: dict[str, Any] | None) -> list[dict[str, Any]]:
    objects = (drawing or {}).get("objects") or []
    return [o for o in objects if isinstance(o, dict)]


# --------------------------------------------------------------------------------------------- saliency


def integrated_gradients(model: nn.Module, image: np.ndarray, target: int, steps: int = 32,
                         lock: threading.Lock = _grad_lock) -> np.ndarray:  # fmt: skip
    """Integrated gradients (black-image baseline) of `target`'s logit w.r.t. a uint8 (28, 28) MNIST image:
    float32 (28, 28); positive where the pixel's ink pushed the model towards `target`. `lock`: held while the
    model runs (the predictor's, when the model is the predictor's)."""
    import torch

    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None, None]
    alphas = torch.linspace(1 / steps, 1, steps).view(-1, 1, 1, 1)
    device = next(model.parameters()).device
    path = (alphas * x).to(device).requires_grad_(True)
    with lock:  # one pass at a time through a model shared by every session
        logits = model(path)[:, target]
        (grads,) = torch.autograd.grad(logits.sum(), path)
    return (x[0, 0] * grads.mean(0)[0].cpu()).detach().numpy().astype(np.float32)


def enlarge(image: np.ndarray, zoom: int = ZOOM) -> Image.Image:
    """A 28x28 uint8 image as crisp big pixels (white ink on black, as the model sees it)."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return im.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST)


def saliency_overlay(image: np.ndarray, attribution: np.ndarray, zoom: int = ZOOM) -> Image.Image:
    """The model's input, dimmed, with red where ink argued for the answer and blue where it argued against."""
    base = np.asarray(image, dtype=np.float32) / 255 * 0.45
    from scipy.ndimage import gaussian_filter

    attr = gaussian_filter(np.asarray(attribution, dtype=np.float32), sigma=0.8)  # per-pixel IG is speckled
    top = float(np.abs(attr).max())
    a = attr / top if top > 0 else np.zeros_like(attr)
    pos, neg = np.clip(a, 0, 1) ** 0.7, np.clip(-a, 0, 1) ** 0.7
    red, blue = np.array([1.0, 0.25, 0.1]), np.array([0.15, 0.5, 1.0])
    g = base[..., None]
    rgb = g * (1 - pos[..., None] - neg[..., None]).clip(0, 1) + pos[..., None] * red + neg[..., None] * blue
    im = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
    return im.resize((im.width * zoom, im.height * zoom), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------------------------- formatting


def verdict(pred: Prediction) -> tuple[str, str]:
    """(kind, text) for a prediction: kind is "ok", "empty", "not_a_digit" or "error"; text says it in words."""
    if pred.status == "ok":
        sure = pred.confidence
        hedge = "" if sure >= 0.9 else " — not very sure" if sure >= 0.5 else " — just a guess"
        return "ok", (">99.9%" if sure > 0.999 else f"{sure:.1%}") + f" sure{hedge}"
    if pred.status == "empty":
        return "empty", EMPTY_HINT
    if pred.status == "not_a_digit":
        return "not_a_digit", f"{NOT_A_DIGIT} Try one clear digit, written large."
    return "error", friendly_error(pred.message)


def friendly_error(message: str | None) -> str:
    """An ImageError's one line ('<bytes>: not a supported image ...') as a sentence for a person."""
    text = (message or "the image could not be read").strip()
    for prefix in ("<bytes>: ", "<stream>: ", "image: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return f"Sorry, that file can't be used: {text}."


def probability_chart(probabilities: Sequence[float], digit: int | None = None) -> dict[str, Any]:
    """A Vega-Lite bar chart of the 10 calibrated probabilities, the chosen digit highlighted (a plain spec:
    building it through Altair's validation would cost more than the prediction)."""
    rows = [{"digit": str(d), "probability": round(float(p), 6), "chosen": d == digit}
            for d, p in enumerate(probabilities)]  # fmt: skip
    return {
        "data": {"values": rows},
        "height": 190,
        "mark": {"type": "bar"},
        "encoding": {
            "x": {"field": "digit", "type": "nominal", "sort": None, "title": None,
                  "axis": {"labelAngle": 0, "labelFontSize": 14}},
            "y": {"field": "probability", "type": "quantitative", "scale": {"domain": [0, 1]}, "title": None,
                  "axis": {"format": "%", "tickCount": 4}},
            "color": {"condition": {"test": "datum.chosen", "value": "#e8590c"}, "value": "#adb5bd"},
            "tooltip": [{"field": "digit", "type": "nominal"},
                        {"field": "probability", "type": "quantitative", "format": ".1%"}],
        },
    }  # fmt: skip


def draw_boxes(image: Image.Image, digits: Sequence[ReadDigit], max_side: int = 900) -> Image.Image:
    """The uploaded image (shrunk to `max_side`) with each segment's box and its digit ('?' if none)."""
    im = image.convert("RGB")
    scale = min(1.0, max_side / max(im.size))
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(im)
    width = max(2, round(max(im.size) / 200))
    from PIL import ImageFont

    for d in digits:
        if d.status == "empty":
            continue
        x0, y0, x1, y1 = (v * scale for v in d.box)
        colour = "#2f9e44" if d.status == "ok" else "#e03131"
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        size = max(12, round((y1 - y0) * 0.3))
        font = ImageFont.load_default(size)
        label = d.char
        lx, ly = x0, max(0, y0 - size - 2 * width)
        box = draw.textbbox((lx, ly), label, font=font)
        draw.rectangle((box[0] - width, box[1] - width, box[2] + width, box[3] + width), fill=colour)
        draw.text((lx, ly), label, fill="white", font=font)
    return im


def check_upload(data: bytes, name: str = "file") -> str | None:
    """A friendly reason why these bytes are not worth decoding (empty or too big), else None."""
    if not data:
        return f"“{name}” is empty (0 bytes). Choose a photo or scan of a digit."
    if len(data) > UPLOAD_MB * 1024 * 1024:
        return f"“{name}” is {len(data) / 2**20:.0f} MB; the limit is {UPLOAD_MB} MB. Try a smaller photo."
    return None


def model_facts(run: Path) -> dict[str, str]:
    """Headline figures of a run for the Model tab, as display strings ('—' where unknown)."""
    f = run_facts(run)
    return {
        "test accuracy": pct(f.test_accuracy),
        "95% CI": f"{pct(f.test_ci95[0])} – {pct(f.test_ci95[1])}" if f.test_ci95 else DASH,
        "test images": num(f.test_n),
        "model": f.model or DASH,
        "preset": f.preset or DASH,
        "parameters": num(f.params),
        "ECE": pct(f.ece),
        "temperature": num(f.temperature, "{:.3g}"),
    }


def per_class_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per digit: precision, recall, F1 and support on the test set ([] when not evaluated)."""
    per = (metrics.get("test") or {}).get("per_class") or {}
    rows = []
    for d in sorted(per, key=lambda k: int(k) if str(k).isdigit() else 99):
        c = per[d] or {}
        rows.append({"digit": str(d), "precision": c.get("precision"), "recall": c.get("recall"),
                     "F1": c.get("f1"), "test images": c.get("support")})  # fmt: skip
    return rows


def favicon() -> Image.Image:
    """A drawn "7" (a :material/ icon or an emoji would be fetched from a CDN: the app needs no internet)."""
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    draw.rounded_rectangle((0, 0, 63, 63), radius=12, fill="#e8590c")
    draw.line([(16, 16), (48, 16), (28, 52)], fill="white", width=8, joint="curve")
    return im


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
