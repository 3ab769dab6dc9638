"""The low-resolution, pen and page sets: deterministic, the right shapes and labels, stored losslessly, scored."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digitlab.data import fonts as fonts_module
from digitlab.data import realworld as rw
from digitlab.data import synth
from digitlab.evaluation.refusal import TUNE_SETS


def same(a: rw.RealWorldSet, b: rw.RealWorldSet) -> bool:
    return (len(a) == len(b) and np.array_equal(a.labels, b.labels) and np.array_equal(a.kinds, b.kinds)
            and np.array_equal(a.origins, b.origins)
            and all(x == y if isinstance(x, bytes) else np.array_equal(x, y)
                    for x, y in zip(a.images, b.images, strict=True)))  # fmt: skip


@pytest.fixture(scope="module")
def handwriting():
    fonts = [f for f in fonts_module.find_fonts() if f[2] == "handwriting"]
    return fonts[:2]


def test_lowres_set_is_deterministic_blocky_small_and_labelled(mnist):
    ds = synth.lowres_set(mnist.test, 24, seed=5)
    assert same(ds, synth.lowres_set(mnist.test, 24, seed=5))  # the same bytes for the same seed
    assert not same(ds, synth.lowres_set(mnist.test, 24, seed=6))
    assert same(ds.subset(slice(0, 6)), synth.lowres_set(mnist.test, 6, seed=5))  # image i: seed and i only
    for data, kind, label, origin in zip(ds.images, ds.kinds, ds.labels, ds.origins, strict=True):
        assert isinstance(data, bytes)
        im = Image.open(io.BytesIO(data))
        method, polarity, fmt = kind.split("/")
        assert im.format == fmt.upper() and im.mode == "L"
        assert label == mnist.test.labels[int(origin.split(":")[1])]
        grid = ds.params["grid"][list(ds.images).index(data)]
        if method == "tiny":
            assert max(im.size) <= grid + 2 * (grid // 3)  # the scan itself
        else:
            assert max(im.size) >= 4 * grid
        corner = np.asarray(im)[0, 0]
        assert (corner < 60) if polarity == "white-on-black" else (corner > 195)
    assert {k.split("/")[0] for k in ds.kinds} >= {"nearest", "bilinear"}


def test_pen_set_draws_thin_and_thick_pens_on_canvases(mnist, handwriting):
    ds = synth.pen_set(mnist.test, 8, seed=3, fonts=handwriting)
    assert same(ds, synth.pen_set(mnist.test, 8, seed=3, fonts=handwriting))
    assert [k.split("/")[0] for k in ds.kinds] == ["thin", "thin", "thick", "thick"] * 2
    frac = ds.params["pen_frac"]
    thick = np.array([k.startswith("thick") for k in ds.kinds])
    assert (frac[thick] >= 0.10).all() and (frac[~thick] <= 0.05).all()
    for img, kind in zip(ds.images, ds.kinds, strict=True):
        assert img.shape[:2] == (280, 280) and kind.split("/", 1)[1] in rw.CANVAS_MODES
    if handwriting:
        assert any(o.startswith("font:") for o in ds.origins[1::2])
    mnist_rows = [k for k, o in enumerate(ds.origins) if o.startswith("mnist-test:")]
    assert all(ds.labels[k] == mnist.test.labels[int(ds.origins[k].split(":")[1])] for k in mnist_rows)


def test_thick_font_set_draws_font_glyphs_with_a_marker(handwriting):
    if not handwriting:
        pytest.skip("no handwriting fonts installed (scripts/test.sh installs them)")
    ds = synth.thick_font_set(handwriting, 8, seed=4)
    assert same(ds, synth.thick_font_set(handwriting, 8, seed=4))
    frac = ds.params["pen_frac"]
    assert ((frac >= 0.08) & (frac <= 0.24)).all()
    assert [k.split("/", 1)[1] for k in ds.kinds] == list(rw.CANVAS_MODES) * 2
    assert all(k.startswith("fat/") == (f > 0.16) for k, f in zip(ds.kinds, frac, strict=True))
    assert all(o.startswith("font:") for o in ds.origins) and set(ds.labels.tolist()) <= set(range(10))
    for img in ds.images:
        assert img.shape[:2] == (280, 280)


def test_page_set_puts_a_small_digit_on_a_big_page(mnist):
    ds = synth.page_set(mnist.test, 4, seed=2)
    assert same(ds, synth.page_set(mnist.test, 4, seed=2))
    for img, kind in zip(ds.images, ds.kinds, strict=True):
        h, w = img.shape[:2]
        assert min(h, w) >= 600 and max(h, w) <= 1200
        cov = rw.coverage_u8(img, kind.removeprefix("page/"))
        ys, _ = np.nonzero(cov)
        assert np.ptp(ys) + 1 <= 0.08 * min(h, w)  # small next to the page


def test_new_sets_survive_storage_and_tune_sets_are_validation_digits(mnist, handwriting, tmp_path):
    for ds in (synth.lowres_set(mnist.test, 5, seed=1), synth.pen_set(mnist.test, 4, seed=1, fonts=handwriting),
               synth.page_set(mnist.test, 3, seed=1)):  # fmt: skip
        assert same(ds, rw.load_realworld(rw.save_realworld(ds, tmp_path / f"{ds.name}.npz")))
    index = np.arange(100, 110)
    tune = synth.relabel(synth.lowres_set(mnist.train.subset(index), 4, seed=1), "mnist-train", index, "lowres-tune")
    assert tune.name == "lowres-tune"
    for origin, label in zip(tune.origins, tune.labels, strict=True):
        assert origin.startswith("mnist-train:") and 100 <= int(origin.split(":")[1]) < 110
        assert mnist.train.labels[int(origin.split(":")[1])] == label


def test_stored_sets_are_there_and_small():
    for name in (*rw.SET_NAMES, *TUNE_SETS):
        path = rw.realworld_dir() / f"{name}.npz"
        assert path.is_file(), name
    new = [rw.realworld_dir() / f"{n}.npz" for n in ("lowres", "pen", "page", *TUNE_SETS)]
    assert sum(p.stat().st_size for p in new) < 7e6
    tune = rw.load_realworld("lowres-tune")
    assert all(o.startswith("mnist-train:") for o in tune.origins)
