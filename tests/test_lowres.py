"""Low-resolution input: blocky upscales and tiny files are found, made smooth, read, and not refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digitlab.core.rundir import BUNDLED
from digitlab.data import lowres
from digitlab.data.datasets import stratified_split
from digitlab.data.preprocess import preprocess
from digitlab.data.synth import _scan
from digitlab.inference.predict import Predictor

BUNDLE = BUNDLED


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_run(BUNDLE, tta=False, threads=1)


@pytest.fixture(scope="module")
def scans(mnist):
    """Twelve MNIST validation digits (the bundled run's split) scanned at 7-16 px, white on black."""
    _, val = stratified_split(mnist.train.labels, 0.1, 0)
    idx = val[:12]
    grids = [_scan(mnist.train.images[j], np.random.default_rng([7, k]))[0] for k, j in enumerate(idx)]
    return [np.round(g * 255).astype(np.uint8) for g in grids], mnist.train.labels[idx]


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("zoom", [3, 7, 14])
def test_source_grid_recovers_a_nearest_neighbour_upscale(scans, zoom):
    for grid in scans[0][:4]:
        big = np.kron(grid, np.ones((zoom, zoom), np.uint8))
        rows, cols = lowres.source_grid(big)
        assert np.array_equal(big[rows][:, cols], grid)


def test_source_grid_takes_non_integer_zooms_and_colour(scans):
    grid = scans[0][0]
    h, w = grid.shape
    big = np.asarray(Image.fromarray(grid).resize((round(w * 9.4), round(h * 9.4)), Image.Resampling.NEAREST))
    rows, cols = lowres.source_grid(np.dstack([big] * 3))
    assert np.array_equal(big[rows][:, cols], grid)


def test_smooth_pictures_are_not_blocky(mnist):
    assert lowres.source_grid(mnist.test.images[0]) is None  # anti-aliased: neighbours differ
    bar = np.zeros((28, 28), np.uint8)
    bar[13:15, 4:24] = 255  # two rows thick: no grid of blocks >= 3 px explains it
    assert lowres.source_grid(bar) is None
    im = Image.fromarray(mnist.test.images[0])
    assert lowres.restore(im) == (im, 1.0)


def test_blocky_and_tiny_digits_are_read_and_not_refused(predictor, scans):
    grids, labels = scans
    blocky = [png(np.kron(g, np.ones((14, 14), np.uint8))) for g in grids]  # 8x8 at 112x112, say
    tiny = [png(255 - g) for g in grids]  # the scan itself, black on white
    for images in (blocky, tiny):
        results = predictor.predict(images)
        assert [r.status for r in results] == ["ok"] * len(grids), [r.message for r in results]
        assert np.mean([r.digit for r in results] == labels) >= 11 / 12


def test_a_fat_zero_filling_the_picture_is_not_empty():
    from PIL import ImageDraw, ImageFilter

    im = Image.new("L", (100, 120), 0)
    ImageDraw.Draw(im).ellipse((4, 4, 95, 115), outline=255, width=30)  # a fat marker's "0", cropped tightly
    big = np.asarray(im.filter(ImageFilter.GaussianBlur(3)))
    assert (big > 0).mean() > 0.5  # ink covers most of the picture: its spread there is not noise
    assert preprocess(big).status == "ok"


def test_a_small_digit_on_a_big_page_is_not_empty(mnist):
    page = np.zeros((1000, 1000), np.uint8)
    page[500:528, 300:328] = mnist.test.images[0]  # a 28 px digit: 2.8% of the page
    out = preprocess(page)
    assert out.status == "ok", out.stats.reason


def test_blank_and_noise_are_refused_with_a_reason_and_probabilities(predictor):
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    bright = np.full((112, 112), 255, np.uint8)
    bright[::2, ::2] = 0  # a fine checkerboard: ink everywhere
    for image in (np.zeros((112, 112), np.uint8), noise, bright):
        [r] = predictor.predict(image)
        assert r.status in ("empty", "not_a_digit") and r.digit is None
        assert r.message and "\n" not in r.message
        assert len(r.probabilities) == 10 and sum(r.probabilities) == pytest.approx(1)
