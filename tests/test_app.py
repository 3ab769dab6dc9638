"""The Streamlit app: its helpers, its logic through Streamlit's AppTest, and a real browser (Playwright driving
Debian's Chromium) drawing digits with the mouse and a finger, uploading files, and saving screenshots."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import REPO, run_cli
from digitlab.core.rundir import BUNDLED
from digitlab.serving import demo as app
from digitlab.serving.demo_drawing import CANVAS_PX, STROKE_DEFAULT, canvas_to_gray, drawing_to_gray
from digitlab.serving.demo_views import (
    EMPTY_HINT,
    NOT_A_DIGIT,
    UPLOAD_MB,
    ZOOM,
    check_upload,
    draw_boxes,
    enlarge,
    favicon,
    integrated_gradients,
    model_facts,
    per_class_rows,
    probability_chart,
    saliency_overlay,
    verdict,
)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots and timings (git-ignored)
APP_SCRIPT = Path(app.__file__)

# Strokes as polylines in canvas fractions (x, y), traced from MNIST-like shapes: one list per stroke.
SHAPES = {
    "1": [[(0.52, 0.14), (0.50, 0.50), (0.47, 0.86)]],
    "7": [[(0.26, 0.20), (0.74, 0.20), (0.60, 0.42), (0.50, 0.64), (0.44, 0.86)]],
    "0": [[(0.50 + 0.22 * math.sin(t), 0.50 - 0.34 * math.cos(t)) for t in np.linspace(0, 2 * math.pi, 25)]],
}


# --------------------------------------------------------------------------------------------- helpers


def render_strokes(strokes: list[list[tuple[float, float]]], size: int = CANVAS_PX, width: int = 22,
                   transparent: bool = True) -> np.ndarray:  # fmt: skip
    """RGBA pixels like the canvas exports them: black ink, in alpha over a transparent background."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0) if transparent else (255, 255, 255, 255))
    draw = ImageDraw.Draw(im)
    for stroke in strokes:
        pts = [(x * size, y * size) for x, y in stroke]
        draw.line(pts, fill=(0, 0, 0, 255), width=width, joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=(0, 0, 0, 255))
    return np.asarray(im)


def densify(stroke: list[tuple[float, float]], steps: int = 8) -> list[tuple[float, float]]:
    """The points a pointer reports along a polyline (Fabric smooths between them with quadratic curves)."""
    out = [stroke[0]]
    for (x0, y0), (x1, y1) in pairwise(stroke):
        out += [(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps) for k in range(1, steps + 1)]
    return out


def fabric_path(stroke: list[tuple[float, float]], width: int = 22, color: str = "black", size: int = 280) -> dict:
    """A freehand path as the canvas (Fabric.js 7) serialises it: centre origin, left/top = the box's centre."""
    pts = [(x * size, y * size) for x, y in densify(stroke)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    path = [["M", *pts[0]]] + [["Q", *a, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2] for a, b in pairwise(pts)]
    path.append(["L", *pts[-1]])
    return {"type": "Path", "originX": "center", "originY": "center", "left": (min(xs) + max(xs)) / 2,
            "top": (min(ys) + max(ys)) / 2, "width": max(xs) - min(xs), "height": max(ys) - min(ys),
            "stroke": color, "strokeWidth": width, "scaleX": 1, "scaleY": 1, "path": path}  # fmt: skip


def png_bytes(im: Image.Image | np.ndarray) -> bytes:
    buf = io.BytesIO()
    (im if isinstance(im, Image.Image) else Image.fromarray(im)).save(buf, "PNG")
    return buf.getvalue()


def canvas_state(strokes: list[list[tuple[float, float]]], with_pixels: bool = True) -> dict:
    """What the canvas component sends after the strokes: its JSON and (return_image_data=True) a PNG data URL."""
    data = "data:image/png;base64," + base64.b64encode(png_bytes(render_strokes(strokes))).decode()
    raw = {"version": "7.4.0", "objects": [fabric_path(s) for s in strokes], "background": "#ffffff"}
    return {"drawing": {"raw": raw, "data": data if with_pixels else None}}


def number_png(mnist, digits: list[int], zoom: int = 4) -> tuple[bytes, str]:
    """MNIST test digits side by side as dark ink on white paper (a scanned number); and its text."""
    labels = mnist.test.labels
    picks = [int(np.flatnonzero(labels == d)[1]) for d in digits]
    strip = np.concatenate([np.pad(mnist.test.images[i], 6) for i in picks], axis=1)
    im = Image.fromarray(255 - strip).resize((strip.shape[1] * zoom, strip.shape[0] * zoom), Image.Resampling.BILINEAR)
    return png_bytes(im), "".join(map(str, digits))


def scribble() -> np.ndarray:
    """A dense zigzag scrawl over the whole canvas: ink, but no digit."""
    rng = np.random.default_rng(3)
    pts = [(float(x), float(y)) for x, y in rng.uniform(0.08, 0.92, size=(40, 2))]
    return render_strokes([pts], width=16)


# --------------------------------------------------------------------------------------------- helpers, unit


def test_canvas_to_gray_reads_ink_from_alpha_and_eraser_as_paper():
    rgba = render_strokes(SHAPES["1"])
    assert rgba[..., :3].max() == 0  # the export's colour channels are all black: ink lives in alpha only
    gray = canvas_to_gray(rgba)
    assert gray.dtype == np.uint8 and gray.shape == (280, 280)
    assert gray[140, 140] < 10 and gray[10, 10] == 255  # ink on the stroke, paper elsewhere
    erased = rgba.copy()
    erased[100:180, :, :] = 255  # an opaque white eraser stroke across the middle
    assert canvas_to_gray(erased)[140, 140] == 255 and canvas_to_gray(erased)[60, 144] < 10


def test_drawing_to_gray_renders_fabric_paths_where_the_canvas_shows_them():
    strokes = SHAPES["7"]
    drawn = drawing_to_gray({"objects": [fabric_path(s) for s in strokes]})
    expected = canvas_to_gray(render_strokes(strokes))
    ink, ref = drawn < 128, expected < 128
    assert (ink & ref).sum() / (ink | ref).sum() > 0.85  # same strokes, same place
    moved = fabric_path(strokes[0])
    moved["left"] += 30  # dragged 30 px right in the canvas's edit mode
    shifted = drawing_to_gray({"objects": [moved]}) < 128
    assert abs(np.argwhere(shifted)[:, 1].mean() - np.argwhere(ref)[:, 1].mean() - 30) < 2
    eraser = fabric_path([(0.2, 0.2), (0.8, 0.2)], width=40, color="#ffffff")
    assert (drawing_to_gray({"objects": [*[fabric_path(s) for s in strokes], eraser]})[56, 100:180] == 255).all()
    assert (drawing_to_gray(None) == 255).all() and (drawing_to_gray({"objects": [{"type": "x"}]}) == 255).all()


def test_integrated_gradients_and_overlay(tiny_run, mnist):
    import torch

    from digitlab.model.forward import load_model

    model = load_model(tiny_run)
    image = mnist.test.images[0]
    target = 7
    attr = integrated_gradients(model, image, target, steps=64)
    assert attr.shape == (28, 28) and attr.dtype == np.float32
    assert (attr[image == 0] == 0).all()  # gradient x input: no ink, no credit
    with torch.no_grad():  # completeness: attributions add up to logit(image) - logit(black)
        x = torch.from_numpy(image.astype(np.float32) / 255)[None, None]
        gap = float(model(x)[0, target] - model(torch.zeros_like(x))[0, target])
    assert abs(attr.sum() - gap) < 0.1 * abs(gap) + 0.05
    over = saliency_overlay(image, attr)
    assert over.size == (28 * ZOOM, 28 * ZOOM) and over.mode == "RGB"
    assert enlarge(image).size == (168, 168)
    px = np.asarray(saliency_overlay(image, np.where(image > 0, 1.0, 0.0)))
    r, b = px[..., 0].astype(int), px[..., 2].astype(int)
    assert ((r > 150) & (r > b + 80)).any() and not ((b > r + 80) & (b > 150)).any()  # all red, no blue


def test_verdict_and_messages():
    from digitlab.inference.predict import Prediction

    probs = [0.0] * 10
    assert verdict(Prediction(3, probs, 0.9995, "ok")) == ("ok", ">99.9% sure")
    assert verdict(Prediction(3, probs, 0.62, "ok"))[1] == "62.0% sure — not very sure"
    assert verdict(Prediction(None, [], 0.0, "empty", "no ink"))[1] == EMPTY_HINT
    kind, text = verdict(Prediction(None, probs, 0.0, "not_a_digit", "not a digit: energy"))
    assert kind == "not_a_digit" and "doesn't look like a digit" in text
    kind, text = verdict(Prediction(None, [], 0.0, "error", "<bytes>: not a supported image (expected PNG)"))
    assert text == "Sorry, that file can't be used: not a supported image (expected PNG)."
    assert "0 bytes" in check_upload(b"", "a.png") and check_upload(b"x") is None
    assert "limit is 20 MB" in check_upload(b"\0" * (UPLOAD_MB * 2**20 + 1), "big.png")


def test_probability_chart_is_a_plain_vega_lite_spec():
    spec = probability_chart([0.01] * 9 + [0.91], 9)
    json.dumps(spec)  # serialisable as is
    rows = spec["data"]["values"]
    assert [r["digit"] for r in rows] == [str(d) for d in range(10)]
    assert [r["chosen"] for r in rows] == [False] * 9 + [True]
    assert spec["encoding"]["y"]["scale"]["domain"] == [0, 1]


def test_draw_boxes_marks_each_digit():
    from digitlab.inference.predict import Prediction, ReadDigit

    im = Image.new("L", (400, 100), 255)
    digits = [ReadDigit((10, 10, 60, 90), Prediction(4, [0.1] * 10, 0.9, "ok")),
              ReadDigit((100, 10, 150, 90), Prediction(None, [0.1] * 10, 0.0, "not_a_digit"))]  # fmt: skip
    out = np.asarray(draw_boxes(im, digits))
    assert out.shape == (100, 400, 3)
    assert tuple(out[50, 10]) == (0x2F, 0x9E, 0x44) and tuple(out[50, 100]) == (0xE0, 0x31, 0x31)
    big = draw_boxes(Image.new("RGB", (3000, 1000), "white"), digits)
    assert max(big.size) == 900


def test_model_facts_and_per_class_rows(tiny_run, tmp_path):
    facts = model_facts(tiny_run)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert facts["test accuracy"] == f"{metrics['test']['accuracy']:.2%}"
    assert facts["model"] == "fast" and facts["preset"] == "fast" and facts["parameters"] == f"{metrics['params']:,}"
    rows = per_class_rows(metrics)
    assert [r["digit"] for r in rows] == [str(d) for d in range(10)]
    assert sum(r["test images"] for r in rows) == metrics["test"]["n"]
    assert set(model_facts(tmp_path).values()) == {"—"} and per_class_rows({}) == []


def test_favicon_needs_no_network():
    assert favicon().size == (64, 64)


# --------------------------------------------------------------------------------------------- the CLI


def test_cli_app_refuses_a_missing_or_incomplete_run(tmp_path):
    for run in (tmp_path / "nope", tmp_path):
        r = run_cli("app", run, "--port", "1", timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "best.pt").write_bytes(b"not a checkpoint")
    r = run_cli("app", tmp_path, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot load checkpoint" in r.stderr


def test_cli_app_refuses_a_busy_port(tiny_run):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        s.listen()
        r = run_cli("app", tiny_run, "--port", str(s.getsockname()[1]), timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "pick another --port" in r.stderr


def test_cli_app_refuses_a_feedback_store_it_cannot_open(tiny_run, tmp_path):
    (tmp_path / "file").write_text("")
    for url in (f"sqlite:///{tmp_path / 'file' / 'feedback.db'}", "mysql://u@h/db"):
        r = run_cli("app", tiny_run, "--port", str(free_port()), "--feedback-db", url, timeout=60)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:"), r.stderr


# --------------------------------------------------------------------------------------------- AppTest


@pytest.fixture
def at(tiny_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(app.RUN_ENV, str(tiny_run))
    return AppTest.from_file(str(APP_SCRIPT), default_timeout=60)


def markdown_text(at) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def alerts(at) -> list[str]:
    return [str(e.value) for e in [*at.info, *at.warning, *at.error]]


def shown_digit(at) -> str | None:
    for m in at.markdown:
        if 'data-testid="dl-digit"' in str(m.value):
            return str(m.value).split(">", 1)[1].split("<", 1)[0]
    return None


def test_apptest_first_visit_model_tab_and_empty_canvas(at, tiny_run):
    at.run()
    assert not at.exception
    assert [t.label for t in at.tabs] == [":material/draw: Draw", ":material/photo_camera: Upload",
                                          ":material/monitoring: Model"]  # fmt: skip
    assert EMPTY_HINT in alerts(at) and shown_digit(at) is None
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    values = {m.label: m.value for m in at.metric}
    assert values["Test accuracy"] == f"{metrics['test']['accuracy']:.2%}"
    assert values["Parameters"] == f"{metrics['params']:,}" and values["Model"] == "fast"
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 10  # the per-class table
    assert at.slider(key="stroke").value == STROKE_DEFAULT and at.segmented_control(key="tool").value == app.PEN


def test_apptest_drawing_shows_the_predictors_answer_and_clear_resets_it(at, tiny_run):
    from digitlab.inference.predict import Predictor

    at.run()
    at.session_state["canvas-0"] = canvas_state(SHAPES["7"])
    at.run()
    assert not at.exception
    expected = Predictor.from_run(tiny_run).predict(canvas_to_gray(render_strokes(SHAPES["7"])))[0]
    if expected.status == "ok":
        assert shown_digit(at) == str(expected.digit)
        assert any("answered in" in c.value for c in at.caption)
        draw_tab = at.tabs[0]
        assert len(draw_tab.get("vega_lite_chart")) == 1 and len(draw_tab.get("image")) == 2  # input, saliency
    at.button(key="clear").click().run()
    assert not at.exception and shown_digit(at) is None and EMPTY_HINT in alerts(at)
    assert at.session_state["canvas_gen"] == 1  # a new widget: the old drawing and pixels cannot come back


def test_apptest_undo_rebuilds_the_canvas_without_the_last_stroke(at, tiny_run):
    from digitlab.inference.predict import Predictor

    two = [SHAPES["1"][0], [(0.2, 0.9), (0.8, 0.9)]]
    at.run()
    at.session_state["canvas-0"] = canvas_state(two)
    at.run()
    at.button(key="undo").click().run()
    assert not at.exception
    assert at.session_state["canvas_gen"] == 1
    assert len(at.session_state["canvas_init"]["objects"]) == 1  # the canvas is rebuilt from this drawing
    # answered at once from the drawing's JSON, before the rebuilt canvas sends pixels
    expected = Predictor.from_run(tiny_run).predict(drawing_to_gray({"objects": [fabric_path(two[0])]}))[0]
    if expected.status == "ok":
        assert shown_digit(at) == str(expected.digit)
    else:
        assert shown_digit(at) is None and alerts(at)
    at.button(key="undo").click().run()
    assert at.session_state["canvas_init"] is None and EMPTY_HINT in alerts(at)


@pytest.mark.parametrize(("flag", "tta"), [(None, False), ("0", False), ("1", True)])
def test_apptest_model_is_loaded_once_per_process_without_tta_unless_asked(at, tiny_run, monkeypatch, flag, tta):
    """The serving policy: no test-time augmentation unless `digitlab app --tta` (the run's config asks for it);
    one checkpoint load per process, shared by the predictor and the saliency view."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from digitlab.core import rundir
    from digitlab.inference.predict import Predictor
    from digitlab.model import forward

    assert rundir.RunDir(tiny_run).read_config().tta  # the run's own config would turn it on
    if flag is not None:
        monkeypatch.setenv(app.TTA_ENV, flag)
    calls, loads, original, load = [], [], Predictor.from_run.__func__, forward.load_model

    def counting(cls, *args, **kwargs):
        calls.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Predictor, "from_run", classmethod(counting))
    monkeypatch.setattr(forward, "load_model", lambda *a, **k: loads.append(a) or load(*a, **k))
    st.cache_resource.clear()
    at.run()
    at.session_state["canvas-0"] = canvas_state(SHAPES["1"])
    at.run()
    AppTest.from_file(str(APP_SCRIPT), default_timeout=60).run()  # a second visitor
    assert not at.exception and len(calls) == 1 and len(loads) == 1
    assert calls[0]["tta"] is tta


def test_apptest_scribble_is_not_a_digit(at):
    at.run()
    data = "data:image/png;base64," + base64.b64encode(png_bytes(scribble())).decode()
    at.session_state["canvas-0"] = {"drawing": {"raw": {"objects": [{"type": "Path"}]}, "data": data}}
    at.run()
    assert not at.exception
    assert shown_digit(at) is None and any(NOT_A_DIGIT in a for a in alerts(at))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"hello, not a picture", "not a supported image"),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "can't be used"),  # a truncated PNG
        ("empty.png", b"", "empty (0 bytes)"),
        ("huge.png", None, "too many pixels"),
    ],
)
def test_apptest_bad_uploads_get_a_sentence_not_a_stack_trace(at, name, content, message):
    if content is None:  # 8000 x 6000 = 48 Mpx (over the 40 Mpx limit), a small file: it compresses well
        content = png_bytes(Image.new("1", (8000, 6000), 1))
        assert len(content) < 1_000_000
    at.run()
    at.file_uploader(key="upload").set_value((name, content, "application/octet-stream"))
    at.run()
    assert not at.exception
    errors = [str(e.value) for e in at.error]
    assert len(errors) == 1 and message in errors[0], errors
    assert "Traceback" not in errors[0]


def test_apptest_upload_reads_a_number(at, mnist):
    content, _ = number_png(mnist, [4, 1, 9])
    at.run()
    at.file_uploader(key="upload").set_value(("number.png", content, "image/png"))
    at.run()
    assert not at.exception
    number = [m.value for m in at.markdown if 'data-testid="dl-number"' in str(m.value)]
    assert len(number) == 1 and len(number[0].split(">", 1)[1].split("<", 1)[0]) == 3  # three digits read


def test_apptest_missing_run_is_one_friendly_line(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(app.RUN_ENV, str(tmp_path / "gone"))
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=60).run()
    assert not at.exception
    assert len(at.error) == 1 and "Cannot load the model" in at.error[0].value and len(at.tabs) == 0


# --------------------------------------------------------------------------------------------- the browser

_browser_missing = pytest.mark.skipif(
    not CHROMIUM.exists() or importlib.util.find_spec("playwright") is None,
    reason="needs /usr/bin/chromium (bash scripts/test.sh installs it) and playwright (pip install -e '.[dev]')",
)


def needs_browser(test):
    """A real-browser test: marked `browser` (deselect with -m "not browser"), skipped with a reason without one."""
    return pytest.mark.browser(_browser_missing(test))


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]  # fmt: skip
DIGIT_JS = "d => { const e = document.querySelector('.dl-digit'); return e !== null && e.textContent.trim() === d; }"


@pytest.fixture(scope="session")
def good_run(tmp_path_factory, mnist) -> Path:
    """A model good enough to read drawn digits: the bundled one if present, else a small one trained here
    (~30 s on 2 cores, ~99% on the first 500 test images)."""
    bundled = BUNDLED
    if (bundled / "checkpoint" / "best.pt").is_file():
        return bundled
    from digitlab.core.config import get_preset
    from digitlab.evaluation.pipeline import train

    out = tmp_path_factory.mktemp("app") / "small"
    config = get_preset("fast").override(limit=12000, epochs=2, model_args={"widths": [16, 32, 64]}, test_limit=500)
    train(config, out, dataset=mnist)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> str:
    """The SQLite store the browser tests' app writes its feedback to."""
    return f"sqlite:///{tmp_path_factory.mktemp('app-feedback') / 'feedback.db'}"


@pytest.fixture(scope="module")
def server(good_run, demo_store, tmp_path_factory):
    """`digitlab app RUN --port P --feedback-db URL` started as a user would, until the module's tests are done."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("app-server") / "app.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "digitlab.cli", "app", str(good_run), "--port", str(port), "--feedback-db", demo_store]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the app did not start:\n{log_path.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        yield b
        b.close()


def shot(page, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its own container, so the viewport grows first."""
    size = page.viewport_size
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height), 5000))})
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size(size)


def open_app(page, url: str):
    page.goto(url)
    canvas = page.locator("canvas.upper-canvas")  # Fabric's event layer, over the drawing layer
    canvas.wait_for(timeout=60_000)
    page.get_by_text(EMPTY_HINT).wait_for(timeout=30_000)
    # Strokes go to the canvas's on-screen box: wait until it stops moving (the component's iframe may still
    # be laid out when the hint shows), or a stroke can land beside the canvas and no digit ever appears.
    box, deadline = None, time.monotonic() + 10
    while time.monotonic() < deadline:
        page.wait_for_timeout(150)
        now = canvas.bounding_box()
        if now is not None and now == box:
            break
        box = now
    return canvas


def mouse_strokes(page, box: dict, strokes, steps: int = 6) -> None:
    """Draw each stroke with real mouse movements: press, move through the points, release."""
    for stroke in strokes:
        pts = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*pts[0])
        page.mouse.down()
        for (x0, y0), (x1, y1) in pairwise(pts):
            for k in range(1, steps + 1):
                page.mouse.move(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps)
        page.mouse.up()


def touch_strokes(cdp, box: dict, strokes, steps: int = 6) -> None:
    """Draw with a finger: Chrome DevTools touch events (touchStart, touchMove..., touchEnd)."""
    for stroke in strokes:
        pts = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": pts[0][0], "y": pts[0][1]}]})
        for (x0, y0), (x1, y1) in pairwise(pts):
            for k in range(1, steps + 1):
                point = {"x": x0 + (x1 - x0) * k / steps, "y": y0 + (y1 - y0) * k / steps}
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


@pytest.mark.slow
@needs_browser
def test_browser_draw_1_7_0_and_clear(server, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    canvas = open_app(page, server)
    shot(page, "app-empty")
    timings = {}
    for digit in ("1", "7", "0"):
        mouse_strokes(page, canvas.bounding_box(), SHAPES[digit])
        start = time.perf_counter()
        page.wait_for_function(DIGIT_JS, arg=digit, polling="raf", timeout=20_000)
        timings[digit] = time.perf_counter() - start  # stroke end -> the digit on screen
        page.get_by_text("answered in").wait_for()
        shot(page, f"app-draw-{digit}")
        page.locator(".st-key-clear button").click()
        page.get_by_text(EMPTY_HINT).wait_for(timeout=20_000)
        assert page.locator(".dl-digit").count() == 0
        expect(page.locator("canvas.upper-canvas")).to_have_count(1)  # one fresh canvas (it remounts on clear)
    shot(page, "app-cleared")
    lines = [f"{d}: {s * 1000:.0f} ms" for d, s in timings.items()]
    (ARTIFACTS / "app-roundtrip.txt").write_text("stroke end -> digit shown (Chromium, headless)\n" + "\n".join(lines))
    print("round trip:", ", ".join(lines))
    assert max(timings.values()) < 5.0, timings  # interactive (typically ~0.3 s; generous for loaded CI)
    page.close()


GRID = (0.05, 0.5, 0.95)  # where strokes start, in canvas fractions: both edges and the middle, each way
INK_JS = """([canvas, x, y]) => {
  const d = canvas.getContext("2d").getImageData(x - 2, y - 2, 5, 5).data;
  let darkest = 255;
  for (let i = 0; i < d.length; i += 4) darkest = Math.min(darkest, d[i]);
  return darkest;
}"""  # the darkest red value of the 5x5 pixels around (x, y) on Fabric's drawing layer


@needs_browser
def test_browser_strokes_land_wherever_they_start(server, browser):
    """A short stroke starting in each of the canvas's nine regions, corners included, becomes ink where it was
    drawn: nothing over the canvas (the component's own toolbar covered the top of its right half) takes it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    box = open_app(page, server).bounding_box()
    layer = page.locator("canvas.dc-canvas.lower-canvas")  # what the strokes became, as the app receives it
    lost = []
    for fy in GRID:
        for fx in GRID:
            end = (fx + 0.1, fy) if fx == fy == 0.5 else (fx + (0.5 - fx) * 0.2, fy + (0.5 - fy) * 0.2)
            spot = [round((fx + end[0]) / 2 * CANVAS_PX), round((fy + end[1]) / 2 * CANVAS_PX)]
            assert page.evaluate(INK_JS, [layer.element_handle(), *spot]) == 255  # paper before the stroke
            page.mouse.move(1, 1)  # the pen arrives from off the canvas, as a finger or a stylus does
            mouse_strokes(page, box, [[(fx, fy), end]])
            try:
                page.wait_for_function(f"a => ({INK_JS})(a) < 100", arg=[layer.element_handle(), *spot], timeout=3000)
            except PlaywrightTimeout:
                lost.append((fx, fy))
    shot(page, "app-strokes-everywhere")
    assert not lost, f"strokes starting at these canvas fractions left no ink: {lost}"
    page.close()


@needs_browser
def test_browser_wrong_its_a_7_stores_a_row(server, browser, demo_store, good_run):
    """Draw a 1, opt in, tap "Wrong — it's a 7": one row in the store, as the visitor labelled it."""
    from digitlab.data.feedback_store import FeedbackStore

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    canvas = open_app(page, server)
    mouse_strokes(page, canvas.bounding_box(), SHAPES["1"])
    page.wait_for_function(DIGIT_JS, arg="1", polling="raf", timeout=20_000)
    seven = page.locator(".st-key-fb-draw-7 button")
    assert seven.is_disabled() and page.get_by_text("Wrong — it's a").is_visible()  # until the visitor opts in
    page.locator(".st-key-fb-draw-optin label").click()
    seven.click()  # once enabled
    page.get_by_text("Stored as a 7").wait_for(timeout=20_000)
    page.get_by_text("You have shared 1 drawing from this browser · 1 in the store").wait_for()
    shot(page, "app-feedback-stored")
    page.close()
    with FeedbackStore.open(demo_store, create=False) as store:
        [row] = store.rows()
    assert (row.label, row.source, row.model, row.predicted, row.status) == (
        7,
        "demo",
        good_run.resolve().name,
        1,
        "ok",
    )
    assert row.media_type == "image/png" and Image.open(io.BytesIO(row.image)).size == (CANVAS_PX, CANVAS_PX)
    assert str(uuid.UUID(row.session)) == row.session and row.model_input.shape == (28, 28)


@needs_browser
def test_browser_upload_number_and_bad_file(server, browser, mnist, tmp_path):
    content, text = number_png(mnist, [3, 0, 7])
    good, bad = tmp_path / "number.png", tmp_path / "notes.txt"
    good.write_bytes(content)
    bad.write_text("this is not an image")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    open_app(page, server)
    page.get_by_role("tab", name="Upload").click()
    page.locator("input[type=file]").set_input_files(str(good))
    number = page.locator(".dl-number")
    number.wait_for(timeout=30_000)
    assert number.inner_text().replace(" ", "") == text
    page.get_by_text("each box is one digit").wait_for()
    shot(page, "app-upload-number")
    page.locator("input[type=file]").set_input_files(str(bad))
    page.get_by_text("Sorry, that file can't be used").wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    shot(page, "app-upload-bad")
    page.get_by_role("tab", name="Model").click()
    page.get_by_text("Confusion matrix").first.wait_for()
    shot(page, "app-model")
    page.close()


@needs_browser
def test_browser_phone_touch_drawing(server, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True,
                                  device_scale_factor=2)  # fmt: skip
    page = context.new_page()
    canvas = open_app(page, server)
    box = canvas.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390  # the whole canvas is on screen
    touch_strokes(context.new_cdp_session(page), box, SHAPES["7"])
    page.wait_for_function(DIGIT_JS, arg="7", polling="raf", timeout=20_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    assert page.locator(".dl-digit").bounding_box()["y"] < 844  # the answer is on the first screen
    page.get_by_text("answered in").wait_for()
    # the feedback buttons: fingertip-sized, wrapping onto a second row rather than off the screen
    digits = [page.locator(f".st-key-fb-draw-{d} button").bounding_box() for d in range(10)]
    assert all(b["width"] >= 44 and b["height"] >= 44 and b["x"] + b["width"] <= 390 for b in digits), digits
    assert len({round(b["y"]) for b in digits}) >= 2
    page.screenshot(path=str(ARTIFACTS / "app-phone-7.png"))
    shot(page, "app-phone-7-full")
    context.close()
