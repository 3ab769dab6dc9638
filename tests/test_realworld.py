"""Real-world evaluation sets: deterministic generators, the formats users send, storage, scoring, report, CLI."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from digitlab.data import fonts as fonts_module
from digitlab.data import realworld as rw
from digitlab.data import synth
from digitlab.data.preprocess import naive_resize, preprocess, preprocess_array
from digitlab.evaluation import realworld as scoring
from digitlab.evaluation.sections import REPORT_HEADING


def same_images(a: rw.RealWorldSet, b: rw.RealWorldSet) -> bool:
    return len(a) == len(b) and all(
        x == y if isinstance(x, bytes) else (isinstance(y, np.ndarray) and np.array_equal(x, y))
        for x, y in zip(a.images, b.images, strict=True)
    )


def same_set(a: rw.RealWorldSet, b: rw.RealWorldSet) -> bool:
    return (
        same_images(a, b)
        and np.array_equal(a.labels, b.labels)
        and np.array_equal(a.kinds, b.kinds)
        and np.array_equal(a.origins, b.origins)
        and a.params.keys() == b.params.keys()
        and all(np.allclose(a.params[k], b.params[k]) for k in a.params)
    )


def mnist_index(origin: str) -> int:
    assert origin.startswith("mnist-test:")
    return int(origin.split(":")[1])


@pytest.fixture(scope="module")
def canvas(mnist):
    return synth.canvas_set(mnist.test, 16, seed=3)


@pytest.fixture(scope="module")
def fonts():
    found = fonts_module.find_fonts()
    if not found:
        pytest.skip("none of digitlab.data.fonts.FONTS is installed")
    return found[:2]


# ----------------------------------------------------------------------------------------------- generators


def test_canvas_set_is_deterministic_and_prefix_stable(mnist, canvas):
    assert same_set(canvas, synth.canvas_set(mnist.test, 16, seed=3))
    assert same_set(canvas.subset(slice(0, 5)), synth.canvas_set(mnist.test, 5, seed=3))  # image i: seed and i only
    other = synth.canvas_set(mnist.test, 4, seed=4)
    assert not same_images(canvas.subset(slice(0, 4)), other)


def test_canvas_set_pen_range_draws_fatter_strokes(mnist, canvas):
    from digitlab.data.measure import stroke_width

    fat = synth.canvas_set(mnist.test, 4, seed=3, pen=(40, 40))
    assert (fat.params["pen"] == 40).all() and (canvas.params["pen"] <= 28).all()
    ink = [rw.coverage_u8(img, kind).astype(np.float32) / 255 for img, kind in zip(fat.images, fat.kinds, strict=True)]
    assert min(stroke_width(a) for a in ink) > 30  # the pen's width, give or take anti-aliasing


def test_canvas_images_are_browser_canvas_exports(mnist, canvas):
    assert set(canvas.kinds) == set(rw.CANVAS_MODES)  # every export variant, mixed
    for img, kind, origin, label in zip(canvas.images, canvas.kinds, canvas.origins, canvas.labels, strict=True):
        assert img.dtype == np.uint8 and img.shape[:2] == (280, 280)
        assert label == mnist.test.labels[mnist_index(origin)]
        corners = img[[0, 0, -1, -1], [0, -1, 0, -1]]
        if kind.startswith("rgba/"):
            assert img.shape == (280, 280, 4)
            alpha = img[..., 3]
            assert (img[alpha == 0] == 0).all()  # untouched pixels are (0, 0, 0, 0)
            assert (alpha == 0).mean() > 0.5 and alpha.max() == 255
            assert ((alpha > 0) & (alpha < 255)).sum() > 0  # anti-aliased edges
            ink = img[alpha == 255][:, :3]
            assert (ink == (0 if kind == "rgba/black-ink" else 255)).all()
        else:
            assert img.shape == (280, 280, 3)
            assert (corners == (0 if kind == "rgb/white-on-black" else 255)).all()
            assert len(np.unique(img)) > 10  # anti-aliased, not binary
    # Off-centre, scaled and with a pen much thicker than MNIST's one or two pixels.
    p = canvas.params
    assert (np.abs(p["angle"]) <= 15).all() and (p["pen"] >= 12).all() and (p["pen"] <= 28).all()
    assert p["height"].min() >= 120 and p["height"].max() <= 250


def test_preprocessed_canvas_is_close_to_its_mnist_digit(mnist, canvas):
    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])

    ours, naive = [], []
    for img, origin, angle in zip(canvas.images, canvas.origins, canvas.params["angle"], strict=True):
        digit = mnist.test.images[mnist_index(origin)]
        # The same digit rotated like the canvas, framed the MNIST way.
        ref = preprocess_array(np.asarray(Image.fromarray(digit).rotate(float(angle), Image.Resampling.BICUBIC)))
        out = preprocess(img)
        assert out.status == "ok"
        ours.append(corr(out.image, ref.image))
        naive.append(corr(naive_resize(img), ref.image))
    assert np.median(ours) > 0.8 and min(ours) > 0.3
    assert np.median(naive) < 0.5  # the baseline leaves the digit small and off-centre


def test_photo_set_is_jpeg_ink_on_paper(mnist):
    ds = synth.photo_set(mnist.test, 6, seed=5)
    assert same_set(ds, synth.photo_set(mnist.test, 6, seed=5))
    for data, kind in zip(ds.images, ds.kinds, strict=True):
        assert isinstance(data, bytes) and data[:2] == b"\xff\xd8"
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and im.mode == ("L" if kind == "jpeg/l" else "RGB")
            assert min(im.size) >= 128 and max(im.size) <= 256
            g = np.asarray(im.convert("L"), float)
        assert np.median(g) - np.percentile(g, 1) > 60  # dark ink on light paper
        assert np.std(g[g >= np.median(g)]) > 1  # the paper is not flat: lighting, texture, noise
        assert preprocess(data).status == "ok"


def test_font_set_is_deterministic_with_both_polarities(fonts):
    ds = fonts_module.font_set(seed=7, fonts=fonts, variants=2)
    assert same_set(ds, fonts_module.font_set(seed=7, fonts=fonts, variants=2))
    assert len(ds) == 10 * 2 * len(fonts)
    assert sorted(set(ds.labels.tolist())) == list(range(10))
    assert {k.split("/", 1)[1] for k in ds.kinds} == set(rw.CANVAS_MODES)
    sizes = {img.shape[:2] for img in ds.images}
    assert len(sizes) > 1 and all(min(s) >= 64 and max(s) <= 280 for s in sizes)


# ----------------------------------------------------------------------------------------------- storage


def test_save_and_load_give_back_the_same_images(mnist, canvas, tmp_path):
    photo = synth.photo_set(mnist.test, 3, seed=5)
    for ds in (canvas.subset(slice(0, 6)), photo):
        path = rw.save_realworld(ds, tmp_path / f"{ds.name}.npz", {"seed": 3})
        back = rw.load_realworld(path)
        assert back.name == ds.name and same_set(back, ds)
        assert isinstance(back.images[-1], type(ds.images[-1]))
        assert same_set(back.subset([2, 0]), ds.subset([2, 0]))


def test_committed_sets_are_there_and_small():
    files = {name: rw.realworld_dir() / f"{name}.npz" for name in rw.SET_NAMES}
    assert all(f.is_file() for f in files.values())
    assert sum(files[name].stat().st_size for name in ("canvas", "photo", "fonts")) < 11e6  # (the others: test_synth)
    sets = {name: rw.load_realworld(name) for name in rw.SET_NAMES}
    assert len(sets["canvas"]) == 2000 and len(sets["photo"]) == 1000 and len(sets["fonts"]) >= 1000
    assert set(sets["canvas"].kinds) == set(rw.CANVAS_MODES)
    assert np.bincount(sets["fonts"].labels, minlength=10).min() > 0
    first = sets["canvas"].images[0]
    assert first.shape[:2] == (280, 280) and first.dtype == np.uint8


# ----------------------------------------------------------------------------------------------- scoring


def small_sets(canvas) -> dict[str, rw.RealWorldSet]:
    return {"canvas": canvas.subset(slice(0, 8)), "fonts": rw.load_realworld("fonts").subset(range(0, 2000, 250))}


def test_evaluate_realworld_writes_metrics_and_report(tiny_run, tmp_path, mnist, canvas):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = json.loads((run / "metrics.json").read_text())
    results = scoring.evaluate_realworld(run, sets=small_sets(canvas))
    assert list(results) == ["canvas", "fonts"]
    for r in results.values():
        assert r["n"] == 8 and 0 <= r["accuracy"] <= 1 and 0 <= r["naive_accuracy"] <= 1 and r["empty"] >= 0
        assert sum(k["n"] for k in r["by_kind"].values()) == 8
        # the run is calibrated: what a user gets, with its "not a digit" rule
        assert 0 <= r["refused"] <= 1 and r["not_a_digit"] + r["empty"] == round(r["refused"] * 8)
        assert r["read"] <= r["accuracy"] + 1e-9 and 0 <= r["answered_accuracy"] <= 1
    assert "by_font" in results["fonts"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["realworld"] == json.loads(json.dumps(results))
    assert {k: v for k, v in metrics.items() if k != "realworld"} == before  # other keys kept

    report = (run / "report.md").read_text()
    assert report.count(REPORT_HEADING) == 1
    assert report.index(REPORT_HEADING) < report.index("## Figures")
    section = report[report.index(REPORT_HEADING) :].split("\n## ")[0]
    assert "| set | n | accuracy (digitlab preprocessing) | naive resize baseline |" in section
    assert f"| canvas | 8 | {100 * results['canvas']['accuracy']:.2f}% |" in section
    assert "| refused | accuracy on answered | read |" in section
    assert f"{100 * results['canvas']['read']:.2f}% |" in section

    # Run again on other sets: the section is replaced, not repeated, and the rest of the report stays.
    scoring.evaluate_realworld(run, sets={"photo": synth.photo_set(mnist.test, 4, seed=1)})
    again = (run / "report.md").read_text()
    assert again.count(REPORT_HEADING) == 1 and "| photo | 4 |" in again and "| canvas |" not in again
    assert again.split(REPORT_HEADING)[0] == report.split(REPORT_HEADING)[0]
    assert list(json.loads((run / "metrics.json").read_text())["realworld"]) == ["photo"]


def test_cli_evaluate_realworld_prints_the_table(tiny_run, tmp_path, canvas, monkeypatch):
    from typer.testing import CliRunner

    from digitlab.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    small = small_sets(canvas)
    monkeypatch.setattr(scoring, "SET_NAMES", tuple(small))
    monkeypatch.setattr(scoring, "load_realworld", lambda name, directory=None: small[name])
    result = CliRunner().invoke(app, ["evaluate", str(run), "--realworld"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "accuracy on real-world input" in result.output
    assert "mnist test" in result.output and "canvas" in result.output and "fonts" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["realworld"]) == {"canvas", "fonts"} and "test" in metrics
    assert REPORT_HEADING in (run / "report.md").read_text()
