"""Run-directory files under stress: writes on a full disk are atomic; broken files are refused on load, in one line."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from digitlab.core.errors import DigitlabError, DigitlabWarning, StorageError
from digitlab.inference.predict import Predictor

TRAIN = ["train", "--preset", "fast", "--limit", "600", "--batch-size", "64", "--no-test", "--val-fraction", "0",
         "--set", 'model_args={"widths": [8, 16, 32]}']  # fmt: skip


def run_cli_with_file_limit(max_bytes: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`digitlab ARGS` where no file may grow past `max_bytes`, as on a full disk: writes fail with EFBIG
    (SIGXFSZ ignored, so the write raises instead of the signal killing the process). No root, no tmpfs."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "-m", "digitlab.cli", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit, timeout=600)  # fmt: skip


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == 1, res.stderr
    err = res.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------- full disk


def test_a_full_disk_at_the_start_is_one_line_and_leaves_no_partial_config(tmp_path):
    out = tmp_path / "r"
    res = run_cli_with_file_limit(200, *TRAIN, "--epochs", "1", "--out", out)  # config.json is ~800 bytes
    one_line_error(res, "cannot write", "config.json", "File too large")
    assert not (out / "config.json").exists() and not leftovers(out)
    res = run_cli(*TRAIN, "--epochs", "1", "--out", out)  # the same command, with room: nothing in its way
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "config.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_a_full_disk_mid_run_keeps_the_last_checkpoint_whole_and_resume_finishes(tmp_path, mnist):
    from digitlab.core.config import get_preset
    from digitlab.evaluation.pipeline import train
    from digitlab.training.stopping import Interrupted

    out = tmp_path / "r"
    config = get_preset("fast").override(limit=600, epochs=2, batch_size=64, model_args={"widths": [8, 16, 32]})
    with pytest.raises(Interrupted):  # stopped once the first epoch is saved
        train(config, out, dataset=mnist, evaluate_test=False, should_stop=(out / "history.csv").exists)
    before = (out / "checkpoint" / "last.pt").read_bytes()
    res = run_cli_with_file_limit(20_000, "train", "--resume", out, "--no-test")  # checkpoints are ~80-180 kB
    one_line_error(res, "cannot write", ".pt: File too large", f"digitlab train --resume {out}")
    assert (out / "checkpoint" / "last.pt").read_bytes() == before and not leftovers(out)
    res = run_cli("train", "--resume", out, "--no-test")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
    import os

    from digitlab.core.atomic import atomic_write_text

    path = atomic_write_text(tmp_path / "a.json", "old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(StorageError, match=r"cannot write .*a\.json: No space left on device — free some space"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and not leftovers(tmp_path)


# --------------------------------------------------------------------------------------------- broken run files


@pytest.fixture(scope="module")
def digit_png(mnist, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("png") / "digit.png"
    Image.fromarray(255 - mnist.test.images[0]).resize((112, 112)).save(path)
    return path


def _calibration(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        cal = json.loads((run / "calibration.json").read_text())
        change(cal)
        (run / "calibration.json").write_text(json.dumps(cal))  # NaN written as JSON's NaN, as Python does

    return mutate


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        path = run / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return mutate


def _truncate(name: str) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        path = run / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return mutate


def _flat_onnx(run: Path) -> None:
    """A well-formed ONNX model of the wrong shape: flat (N, 784) images in, (N, 10) out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((784, 10), np.float32), "w")
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 784])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    graph = helper.make_graph([helper.make_node("MatMul", ["image", "w"], ["logits"])], "flat", [image], [logits], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(run / "model.onnx"))


def _set_ood(key: str, value: object) -> Callable[[dict], None]:
    return lambda cal: cal["ood"].__setitem__(key, value)


def _unlink(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def _config(change: dict) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        cfg = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**cfg, **change}))

    return mutate


BROKEN = {  # name: (how the file is broken, backend, what the one-line error says)
    "temperature-abc": (_calibration(lambda c: c.update(temperature="abc")), "torch",
                        "temperature must be a finite number above 0, not 'abc'"),
    "temperature-nan": (_calibration(lambda c: c.update(temperature=float("nan"))), "torch",
                        "temperature must be a finite number above 0, not nan"),
    "threshold-x": (_calibration(_set_ood("threshold", "x")), "torch", "ood.threshold must be a finite number"),
    "ood-temperature-nan": (_calibration(_set_ood("temperature", float("nan"))), "torch",
                            "ood.temperature must be a finite number above 0"),
    "ood-score-unknown": (_calibration(_set_ood("score", "vibes")), "torch", "ood.score must be one of"),
    "calibration-missing": (_unlink("calibration.json"), "torch", "no calibration.json"),
    "calibration-0-bytes": (_write("calibration.json", b""), "torch", "calibration.json: not valid JSON"),
    "calibration-empty-object": (_write("calibration.json", "{}"), "torch", "temperature must be a finite number"),
    "calibration-a-list": (_write("calibration.json", "[1.5]"), "torch", "calibration.json: expected a JSON object"),
    "config-garbage": (_write("config.json", "{not json"), "torch", "config.json: not valid JSON"),
    "config-wrong-type": (_config({"tta": "yes"}), "torch", "config.json: tta must be bool"),
    "best-garbage": (_write("checkpoint/best.pt", b"\x00garbage" * 64), "torch", "not a safe digitlab checkpoint"),
    "best-truncated": (_truncate("checkpoint/best.pt"), "torch", "not a safe digitlab checkpoint"),
    "onnx-wrong-rank": (_flat_onnx, "onnx", "a digitlab model takes one float [N, 1, 28, 28] image"),
    "onnx-truncated": (lambda run: (_flat_onnx(run), _truncate("model.onnx")(run)), "onnx", "cannot load"),
}  # fmt: skip


@pytest.fixture(scope="module")
def broken_runs(tiny_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    runs = {}
    for name, (mutate, _, _) in BROKEN.items():
        runs[name] = shutil.copytree(tiny_run, root / name)
        mutate(runs[name])
    return runs


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_run_file_is_refused_by_the_predictor(broken_runs, name):
    _, backend, message = BROKEN[name]
    with pytest.raises(DigitlabError) as e:
        Predictor.from_run(broken_runs[name], backend=backend)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_run_file_is_one_line_in_the_cli(broken_runs, digit_png, name):
    _, backend, message = BROKEN[name]
    one_line_error(run_cli("predict", broken_runs[name], digit_png, "--backend", backend), message)


def test_an_uncalibrated_run_is_served_only_when_allowed(broken_runs, digit_png):
    run = broken_runs["calibration-missing"]
    with pytest.warns(DigitlabWarning, match="no calibration.json"):
        p = Predictor.from_run(run, allow_uncalibrated=True)
    assert p.temperature == 1.0 and p.ood is None and p.info["calibrated"] is False
    assert p.predict(str(digit_png))[0].status == "ok"
    res = run_cli("predict", run, digit_png, "--format", "json", "--allow-uncalibrated")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["status"] == "ok"
    assert res.stderr.strip().startswith("warning:") and len(res.stderr.strip().splitlines()) == 1


def test_a_calibrated_run_says_so(tiny_run):
    assert Predictor.from_run(tiny_run).info["calibrated"] is True


def test_serving_an_uncalibrated_run_is_never_ready(broken_runs):
    from fastapi.testclient import TestClient

    from digitlab.serving.api import create_app
    from digitlab.serving.settings import ApiSettings

    run = broken_runs["calibration-missing"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = run_cli("serve", run, "--port", port)  # fails fast at start-up, in one line
    assert res.returncode == 1 and "Traceback" not in res.stderr and "did not start" in res.stderr
    with TestClient(create_app(ApiSettings(run=run, wait_for_model=True))) as client:
        deadline = time.monotonic() + 60
        while (r := client.get("/readyz")).status_code == 503 and "failed" not in r.json()["error"]["message"]:
            assert time.monotonic() < deadline, "the model neither loaded nor failed"
            time.sleep(0.05)
        assert r.status_code == 503 and "no calibration.json" in r.json()["error"]["message"]


def test_a_broken_last_checkpoint_is_one_line_on_resume(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    last = run / "checkpoint" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    one_line_error(run_cli("train", "--resume", run), "cannot load checkpoint", "not a safe digitlab checkpoint")
    shutil.copy(run / "checkpoint" / "best.pt", last)  # a checkpoint, but no optimiser or loop state in it
    one_line_error(run_cli("train", "--resume", run), "cannot resume from", "not a resumable checkpoint")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "epochs": "ten"}))
    one_line_error(run_cli("train", "--resume", run), "config.json: epochs must be int")


# --------------------------------------------------------------------------------------------- mistyped run


def test_a_mistyped_run_directory_is_refused_not_replaced_by_the_bundled_model(tmp_path, digit_png):
    res = run_cli("predict", tmp_path / "runs" / "fsat", digit_png)
    one_line_error(res, f"no run directory {tmp_path / 'runs' / 'fsat'}", "bundled model")
    res = run_cli("read", "runs/fsat/", digit_png, cwd=tmp_path)
    one_line_error(res, "no run directory runs/fsat/")
    from digitlab.cli import predict as cli

    assert cli._run_and_inputs([str(tmp_path / "missing.png")])[0] == cli.default_run()  # a missing image: an input
