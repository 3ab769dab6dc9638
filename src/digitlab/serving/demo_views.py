"""What the demo shows, as plain functions: verdicts in words, the probability chart, boxes, saliency, run facts."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from digitlab.core.formatting import DASH, num, pct
from digitlab.core.summary import run_facts

if TYPE_CHECKING:  # torch is imported where gradients are taken: the page's module imports it only to load the model
    from torch import nn

    from digitlab.inference.predict import Prediction, ReadDigit

UPLOAD_MB = 20
ZOOM = 6  # the 28x28 images are shown at 168 px
EMPTY_HINT = "Draw a digit in the box — the answer appears when you lift the pen."
NOT_A_DIGIT = "That doesn't look like a digit."

_grad_lock = threading.Lock()


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
