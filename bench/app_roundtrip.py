"""Benchmark the app's answer to one stroke: server work, a whole Streamlit rerun, and (--browser) the real round trip.

    python bench/app_roundtrip.py RUN [--repeat 20] [--browser]

1. server: the Draw tab's work after a stroke (PNG from the canvas -> grey -> Predictor.predict without TTA, as
   the app -> integrated gradients on the predictor's model -> overlay images -> chart spec), in process;
2. rerun: the whole script rerun by Streamlit's AppTest with the canvas's message injected (no browser);
3. --browser: `digitlab app RUN` in headless Chromium (/usr/bin/chromium): mouse stroke released -> digit on screen.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from digitlab.serving import demo as app
from digitlab.serving import demo_feedback as app_feedback
from digitlab.serving.demo_drawing import CANVAS_PX, canvas_to_gray
from digitlab.serving.demo_views import EMPTY_HINT, enlarge, integrated_gradients, probability_chart, saliency_overlay

STORE = f"sqlite:///{tempfile.mkdtemp(prefix='app-roundtrip-')}/feedback.db"  # the demo's feedback, thrown away
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
SEVEN = [(0.26, 0.20), (0.74, 0.20), (0.60, 0.42), (0.50, 0.64), (0.44, 0.86)]


def canvas_png(points=SEVEN, size: int = CANVAS_PX) -> bytes:
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(im).line([(x * size, y * size) for x, y in points], fill=(0, 0, 0, 255), width=22, joint="curve")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1000:.0f} ms, max {max(samples) * 1000:.0f} ms (n={len(samples)})"


def server(run: Path, repeat: int) -> list[float]:
    from digitlab.inference.predict import Predictor

    predictor, png = Predictor.from_run(run, tta=False), canvas_png()
    out = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        pred = predictor.predict(canvas_to_gray(np.asarray(Image.open(io.BytesIO(png)))))[0]
        if pred.status == "ok":
            attribution = integrated_gradients(predictor.model, pred.input, pred.digit, lock=predictor.model_lock)
            for im in (enlarge(pred.input), saliency_overlay(pred.input, attribution)):
                im.save(io.BytesIO(), "PNG")  # what st.image does with them
        probability_chart(pred.probabilities, pred.digit)
        out.append(time.perf_counter() - t0)
    return out[1:]  # the first call warms up


def rerun(run: Path, repeat: int) -> list[float]:
    from streamlit.testing.v1 import AppTest

    os.environ[app.RUN_ENV] = str(run)
    os.environ[app_feedback.STORE_ENV] = STORE
    at = AppTest.from_file(str(Path(app.__file__)), default_timeout=120).run()
    data = "data:image/png;base64," + base64.b64encode(canvas_png()).decode()
    out = []
    for k in range(repeat + 1):
        at.session_state["canvas-0"] = {"drawing": {"raw": {"objects": [{"type": "Path", "n": k}]}, "data": data}}
        t0 = time.perf_counter()
        at.run()
        out.append(time.perf_counter() - t0)
    return out[1:]


def browser(run: Path, repeat: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "digitlab.cli", "app", str(run), "--port", str(port), "--feedback-db", STORE]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, out = f"http://localhost:{port}", []
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = b.new_page()
            page.goto(url)
            for _ in range(repeat + 1):
                canvas = page.locator("canvas.upper-canvas")
                canvas.wait_for(timeout=60_000)
                box = canvas.bounding_box()
                page.mouse.move(box["x"] + SEVEN[0][0] * 280, box["y"] + SEVEN[0][1] * 280)
                page.mouse.down()
                for x, y in SEVEN[1:]:
                    page.mouse.move(box["x"] + x * 280, box["y"] + y * 280, steps=6)
                page.mouse.up()
                t0 = time.perf_counter()
                page.locator(".dl-digit").wait_for(timeout=30_000)
                out.append(time.perf_counter() - t0)
                page.locator(".st-key-clear button").click()
                page.get_by_text(EMPTY_HINT).wait_for(timeout=30_000)
            b.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return out[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--browser", action="store_true", help="also time the real round trip in Chromium")
    args = parser.parse_args()
    print(f"server work per stroke:  {ms(server(args.run, args.repeat))}")
    print(f"whole Streamlit rerun:   {ms(rerun(args.run, args.repeat))}")
    if args.browser:
        print(f"stroke end -> digit shown (Chromium): {ms(browser(args.run, max(3, args.repeat // 4)))}")


if __name__ == "__main__":
    main()
