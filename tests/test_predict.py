"""The Predictor on every kind of input, its statuses, thread safety, reading numbers, and the predict/read CLI."""

from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import run_cli
from digitlab.core.errors import ConfigError, RunDirError
from digitlab.inference.predict import Prediction, Predictor


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run, so tests can write calibration.json variants into copies of it."""
    return shutil.copytree(tiny_run, tmp_path_factory.mktemp("predict") / "run")


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_run(run)


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    return mnist.test.images[:8]


def png_bytes(a: np.ndarray, invert: bool = True, scale: int = 4) -> bytes:
    """A digit as a user would send it: dark ink on white paper, larger than 28x28."""
    im = Image.fromarray(255 - a if invert else a).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def grid_image() -> Image.Image:
    """A plaid, fabric-like pattern: passes preprocessing, but has more bright ink than any digit."""
    im = Image.new("L", (140, 140), 255)
    d = ImageDraw.Draw(im)
    for x in range(20, 121, 14):
        d.line((x, 20, x, 120), fill=0, width=7)
        d.line((20, x, 120, x), fill=0, width=7)
    return im


def with_calibration(run: Path, dest: Path, calibration: dict) -> Path:
    copy = shutil.copytree(run, dest)
    (copy / "calibration.json").write_text(json.dumps(calibration))
    return copy


def check_ok(p: Prediction) -> None:
    assert p.status == "ok" and p.message is None
    assert len(p.probabilities) == 10 and sum(p.probabilities) == pytest.approx(1.0)
    assert p.digit == int(np.argmax(p.probabilities)) and p.confidence == max(p.probabilities)
    assert p.input.shape == (28, 28) and p.input.dtype == np.uint8


def test_predict_accepts_paths_bytes_files_pil_and_arrays(predictor, digits, tmp_path):
    data = png_bytes(digits[0])
    path = tmp_path / "seven.png"
    path.write_bytes(data)
    inputs = [str(path), path, data, io.BytesIO(data), Image.open(io.BytesIO(data)), np.asarray(Image.open(path))]
    results = predictor.predict(inputs)
    assert len(results) == len(inputs)
    for r in results:
        check_ok(r)
        assert np.array_equal(r.input, results[0].input)  # one image in six forms: one model input
        assert r.probabilities == pytest.approx(results[0].probabilities, abs=1e-6)  # (batch position: float noise)
    one = predictor.predict(data)
    assert isinstance(one, list) and len(one) == 1 and one[0].digit == results[2].digit
    d = one[0].to_dict()
    assert set(d) == {"digit", "confidence", "status", "message", "probabilities"}
    assert len(one[0].to_dict(include_input=True)["input"]) == 28
    json.dumps(d)  # plain JSON types


def test_a_batch_array_is_many_images(predictor, digits, mnist):
    results = predictor.predict(digits)
    assert len(results) == len(digits)
    for r in results:
        check_ok(r)
    probs = predictor.predict_array(digits)
    assert probs.shape == (8, 10) and np.allclose(probs.sum(1), 1)
    acc = (predictor.predict_array(mnist.test.images[:300]).argmax(1) == mnist.test.labels[:300]).mean()
    info = json.loads((Path(predictor.info["path"]) / "metrics.json").read_text())
    assert acc == pytest.approx(info["test"]["accuracy"])  # the same 300 images, TTA and all, as evaluate_run


def test_blank_canvas_is_empty_and_a_corrupt_file_is_an_error(predictor, digits, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    blank = np.full((200, 200), 255, np.uint8)
    results = predictor.predict([blank, str(bad), png_bytes(digits[1]), str(tmp_path / "missing.png")])
    assert [r.status for r in results] == ["empty", "error", "ok", "error"]
    assert results[0].digit is None and results[0].confidence == 0.0
    # refused, but with the model's probabilities for the (blank) framed image and the reason in one line
    assert len(results[0].probabilities) == 10 and sum(results[0].probabilities) == pytest.approx(1)
    assert results[0].message == "no ink" and results[0].input is not None
    assert results[1].probabilities == []
    assert results[1].digit is None and "\n" not in results[1].message and "bad.png" in results[1].message
    assert "no such file" in results[3].message


def test_not_a_digit_by_the_logit_threshold_and_by_the_ink_gate(run, digits, tmp_path):
    t = 0.5
    never = with_calibration(run, tmp_path / "never", {"temperature": t, "ood": {"score": "energy",
                                                                                  "threshold": 1e9}})  # fmt: skip
    [r] = Predictor.from_run(never).predict(png_bytes(digits[0]))
    assert r.status == "not_a_digit" and r.digit is None and r.confidence == 0.0
    assert len(r.probabilities) == 10 and "below the threshold" in r.message
    ink = {"temperature": t, "ood": {"score": "max_logit", "threshold": -1e9, "ink_max": 0.33}}
    p = Predictor.from_run(with_calibration(run, tmp_path / "ink", ink))
    digit, plaid = p.predict([png_bytes(digits[0]), grid_image()])
    assert digit.status == "ok" and plaid.status == "not_a_digit" and "ink" in plaid.message
    assert p.temperature == t and p.info["ood"]["ink_max"] == 0.33
    # The temperature only changes confidences: the same digit, a different confidence.
    accept_all = {"score": "energy", "threshold": -1e9}
    plain = Predictor.from_run(with_calibration(run, tmp_path / "plain", {"temperature": 1.0, "ood": accept_all}))
    [q] = plain.predict(png_bytes(digits[0]))
    assert q.digit == digit.digit and q.confidence != pytest.approx(digit.confidence)


def test_predict_is_thread_safe(predictor, digits):
    inputs = [png_bytes(d) for d in digits] + [np.full((50, 50), 255, np.uint8), b"junk"]
    serial = predictor.predict(inputs)
    out: dict[int, list[Prediction]] = {}

    def work(k: int) -> None:
        for _ in range(3):
            out[k] = predictor.predict(inputs)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(out) == 4
    for results in out.values():
        assert [(r.digit, r.status, r.message) for r in results] == [(r.digit, r.status, r.message) for r in serial]
        for r, s in zip(results, serial, strict=True):
            assert r.probabilities == pytest.approx(s.probabilities, abs=1e-6)


def test_info_and_loading_errors(predictor, run):
    info = predictor.info
    assert info["run"] == "run" and info["backend"] == "torch" and info["preset"] == "fast"
    assert info["params"] > 0 and 0 <= info["test_accuracy"] <= 1 and info["temperature"] > 0
    with pytest.raises(ConfigError):
        Predictor.from_run(run, backend="tflite")
    with pytest.raises(RunDirError, match="digitlab export .* --int8"):
        Predictor.from_run(run, backend="onnx-int8")  # training exports model.onnx, not the int8 one
    with pytest.raises(RunDirError):
        Predictor.from_run(run.parent / "nowhere")


def three_digits(mnist) -> Image.Image:
    row = np.concatenate([np.pad(mnist.test.images[i], 8) for i in (3, 4, 5)], axis=1)
    return Image.fromarray(255 - row)


def test_read_three_digits_side_by_side(predictor, mnist):
    result = predictor.read(three_digits(mnist))
    assert result.status == "ok" and len(result.text) == 3 and len(result.digits) == 3
    boxes = [d.box for d in result.digits]
    assert all(b[0] < b[2] and b[1] < b[3] for b in boxes)
    assert boxes[0][2] <= boxes[1][0] and boxes[1][2] <= boxes[2][0]  # left to right, apart
    for d, ch in zip(result.digits, result.text, strict=True):
        assert d.status in ("ok", "not_a_digit") and ch == d.char
        assert (d.digit is None) == (d.status != "ok")
    json.dumps(result.to_dict())
    assert predictor.read(np.full((60, 200), 255, np.uint8)).status == "empty"
    bad = predictor.read(b"nope")
    assert bad.status == "error" and bad.text == "" and bad.message


def test_run_is_optional_once_a_model_is_bundled(run, monkeypatch):
    from digitlab.cli import predict as cli

    assert cli._run_and_inputs([str(run), "a.png"]) == (run, ["a.png"])
    assert cli._run_and_inputs(["a.png"])[0] == cli.default_run()  # the model bundled in the package
    from digitlab.core import rundir

    monkeypatch.setattr(rundir, "BUNDLED", run.parent / "no-package" / "pretrained" / "default")
    with pytest.raises(RunDirError, match="no bundled model"):
        cli._run_and_inputs(["a.png", "b.png"])
    with pytest.raises(RunDirError, match="not a run directory"):
        cli._run_and_inputs([str(run.parent), "a.png"])
    monkeypatch.setattr(cli, "default_run", lambda: run)
    assert cli._run_and_inputs(["a.png", "b.png"]) == (run, ["a.png", "b.png"])


def test_cli_predict_json_keeps_file_strings_and_fails_on_a_bad_file(run, digits, tmp_path):
    (tmp_path / "one.png").write_bytes(png_bytes(digits[0]))
    (tmp_path / "two.png").write_bytes(png_bytes(digits[1]))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    files = ["./one.png", str(tmp_path / "two.png"), "bad.png"]
    r = run_cli("predict", run, *files, "--format", "json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    rows = json.loads(r.stdout)
    assert [row["file"] for row in rows] == files
    assert [row["status"] for row in rows] == ["ok", "ok", "error"]
    assert isinstance(rows[0]["digit"], int) and len(rows[0]["probabilities"]) == 10 and rows[0]["confidence"] > 0
    assert rows[2]["digit"] is None and "bad.png" in rows[2]["message"]
    assert "could not be read" in r.stderr and "Traceback" not in r.stderr

    r = run_cli("predict", run, "one.png", "two.png", "--format", "csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("file,digit,confidence,status") and len(lines) == 3


def test_cli_read_json(run, mnist, tmp_path):
    three_digits(mnist).save(tmp_path / "number.png")
    r = run_cli("read", run, tmp_path / "number.png", "--format", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["file"] == str(tmp_path / "number.png") and len(out["text"]) == 3
    assert [len(d["box"]) for d in out["digits"]] == [4, 4, 4]


# --------------------------------------------------------------------------------------------- TTA switch


def test_tta_switch_follows_the_run_unless_told(run, digits):
    from digitlab.model.forward import load_model, predict_logits

    model = load_model(run)
    default = Predictor.from_run(run)  # None: the run's config (the fast preset uses TTA)
    on, off = Predictor.from_run(run, tta=True), Predictor.from_run(run, tta=False)
    assert default.tta is True and on.tta is True and off.tta is False
    assert (default.info["tta"], on.info["tta"], off.info["tta"]) == (True, True, False)
    assert np.allclose(on.logits_array(digits), predict_logits(model, digits, tta=True), atol=1e-5)
    assert np.allclose(off.logits_array(digits), predict_logits(model, digits, tta=False), atol=1e-5)
    assert not np.allclose(on.logits_array(digits), off.logits_array(digits), atol=1e-5)
    # the same temperature and "not a digit" rule either way: only the forward pass changes
    assert (on.temperature, on.ood) == (off.temperature, off.ood)


def test_cli_predict_tta_switch(run, digits, tmp_path):
    (tmp_path / "one.png").write_bytes(png_bytes(digits[0]))
    expected = {}
    for tta in (True, False):
        [p] = Predictor.from_run(run, tta=tta).predict(str(tmp_path / "one.png"))
        expected[tta] = p.probabilities
    assert expected[True] != pytest.approx(expected[False], abs=1e-7)
    for flags, tta in (((), False), (("--no-tta",), False), (("--tta",), True)):  # serving default: off
        r = run_cli("predict", run, "one.png", "--format", "json", *flags, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)[0]["probabilities"] == pytest.approx(expected[tta], abs=1e-6), flags
