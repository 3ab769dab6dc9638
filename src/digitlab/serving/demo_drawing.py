"""The canvas's drawing as a grey image: its RGBA export composited over paper, or its Fabric.js paths rendered."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageDraw

INK = "#000000"
CANVAS_PX = 280  # 10x MNIST: fits a 390 px phone screen with Streamlit's margins
STROKE_DEFAULT = 22  # a thick marker, like MNIST's ~2 px strokes on a 20 px digit


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
