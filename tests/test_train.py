"""Training on tiny subsets: determinism, bit-exact resume, clean stops on signals, the run directory."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from digitlab.core.config import get_preset
from digitlab.core.errors import ConfigError, RunDirError
from digitlab.evaluation.pipeline import train
from digitlab.training.stopping import Interrupted

TINY = dict(limit=600, epochs=2, batch_size=64, test_limit=200)


def tiny(preset: str = "fast", **changes):
    small = {"model_args": {"widths": [8, 16, 32]}} if preset in ("fast", "accurate") else {}
    return get_preset(preset).override(**{**TINY, **small, **changes})


def weights(run_dir, name="best"):
    return torch.load(run_dir / "checkpoint" / f"{name}.pt", weights_only=True)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_gives_identical_results(tmp_path, mnist):
    r1 = train(tiny(), tmp_path / "a", dataset=mnist, evaluate_test=False)
    r2 = train(tiny(), tmp_path / "b", dataset=mnist, evaluate_test=False)
    assert r1.metrics["val"] == r2.metrics["val"]
    assert [row["train_loss"] for row in r1.history] == [row["train_loss"] for row in r2.history]
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    r3 = train(tiny(seed=7), tmp_path / "c", dataset=mnist, evaluate_test=False)
    assert r3.history[0]["train_loss"] != r1.history[0]["train_loss"]
    # without the test evaluation no export either (its parity check reads test images); calibration is there
    assert "test" not in r1.metrics and not (tmp_path / "a" / "model.onnx").exists()
    assert (tmp_path / "a" / "calibration.json").is_file()


@pytest.mark.parametrize("preset", ["fast", "seed", "accurate"])  # accurate: the EMA state resumes too
def test_resume_after_a_stop_ends_with_the_same_weights(tmp_path, mnist, preset):
    config = tiny(preset, epochs=3, elastic=34.0 if preset == "accurate" else None)  # elastic: its RNG draws resume
    train(config, tmp_path / "full", dataset=mnist, evaluate_test=False)

    calls = {"n": 0}

    def stop_mid_second_epoch() -> bool:  # steps per epoch here: 480 // 64 = 7
        calls["n"] += 1
        return calls["n"] == 10

    with pytest.raises(Interrupted):
        train(config, tmp_path / "cut", dataset=mnist, evaluate_test=False, should_stop=stop_mid_second_epoch)
    assert (tmp_path / "cut" / "checkpoint" / "last.pt").exists()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    train(None, tmp_path / "cut", resume=True, dataset=mnist, evaluate_test=False)
    assert_same_weights(weights(tmp_path / "full", "last"), weights(tmp_path / "cut", "last"))
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    with open(tmp_path / "cut" / "history.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_existing_run_is_not_overwritten_and_resume_needs_a_checkpoint(tmp_path, mnist):
    train(tiny(epochs=1), tmp_path / "r", dataset=mnist, evaluate_test=False)
    with pytest.raises(RunDirError, match="already holds a run"):
        train(tiny(epochs=1), tmp_path / "r", dataset=mnist, evaluate_test=False)
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(None, tmp_path / "empty", resume=True)
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("turbo")


@pytest.mark.slow
def test_sigint_saves_a_resumable_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "fast", "--limit", "1000", "--epochs", "30", "--batch-size", "32",
            "--test-limit", "200", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "digitlab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (out / "history.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    assert (out / "checkpoint" / "last.pt").exists()
    done = torch.load(out / "checkpoint" / "last.pt", weights_only=True)["state"]["epoch"]
    assert 1 <= done < 30

    # finish quickly: the resumed run keeps the saved config, so shorten it through the config file
    cfg = out / "config.json"
    cfg.write_text(cfg.read_text().replace('"epochs": 30', f'"epochs": {done + 1}'))
    res = run_cli("train", "--resume", out)
    assert res.returncode == 0, res.stderr
    assert (out / "metrics.json").exists()


def test_cli_errors_are_one_line(tmp_path):
    res = run_cli("train", "--preset", "turbo", "--out", tmp_path / "x")
    assert res.returncode == 1
    assert "unknown preset 'turbo'" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("train", "--data", tmp_path / "nope", "--out", tmp_path / "y")
    assert res.returncode == 1 and "no such dataset" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("train", "--resume", tmp_path / "missing")
    assert res.returncode == 1 and "nothing to resume" in res.stderr


def test_signal_handlers_are_restored(tmp_path, mnist):
    before = signal.getsignal(signal.SIGINT)
    train(tiny(epochs=1), tmp_path / "r", dataset=mnist, evaluate_test=False)
    assert signal.getsignal(signal.SIGINT) is before


def test_run_directory_layout_and_metrics_keys(tiny_run):
    for rel in ["config.json", "history.csv", "metrics.json", "checkpoint/best.pt", "checkpoint/last.pt", "report.md",
                "plots/curves.png", "plots/confusion.png", "plots/errors.png", "plots/reliability.png"]:  # fmt: skip
        assert (tiny_run / rel).is_file(), rel
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert 0 <= m["val"]["accuracy"] <= 1
    assert 0 <= m["test"]["accuracy"] <= 1
    assert sorted(m["test"]["per_class"]) == [str(d) for d in range(10)]
    assert m["train_seconds"] > 0 and m["params"] > 0
    assert m["preset"] == "fast" and m["seed"] == 42
    assert m["torch"] == torch.__version__ and m["device"].startswith("cpu")
    report = (tiny_run / "report.md").read_text()
    assert "official test set" in report.lower()
    assert f"| Validation without TTA | {100 * m['val_ablation']['without_tta']:.2f}% |" in report


def test_config_round_trips_through_the_run_directory(tiny_run):
    from digitlab.core.config import TrainConfig

    config = TrainConfig.load(tiny_run / "config.json")
    assert config.preset == "fast" and config.limit == 1000 and config.model_args == {"widths": [8, 16, 32]}


def test_split_seed_fixes_the_validation_split_across_run_seeds(mnist):
    from digitlab.data.datasets import split_data

    a = split_data(mnist, tiny(seed=1, split_seed=5))[1]
    b = split_data(mnist, tiny(seed=2, split_seed=5))[1]
    c = split_data(mnist, tiny(seed=2))[1]
    assert np.array_equal(a.images, b.images) and not np.array_equal(b.images, c.images)


def test_ema_weights_are_the_ones_kept_and_their_gain_is_recorded(tmp_path, mnist):
    r = train(tiny("accurate", epochs=2), tmp_path / "r", dataset=mnist, evaluate_test=False)
    ablation = r.metrics["val_ablation"]  # validation only: what the EMA and TTA bought in this run
    assert set(ablation) == {"without_ema", "without_tta"} and all(0 <= v <= 1 for v in ablation.values())
    best, raw = weights(tmp_path / "r"), weights(tmp_path / "r", "last")
    assert best.keys() == raw.keys()
    assert any(not torch.equal(best[k], raw[k]) for k in best if k.endswith("weight"))  # the average, not the last step
    ema = torch.load(tmp_path / "r" / "checkpoint" / "last.pt", weights_only=True)["ema"]
    assert all(torch.equal(best[k], ema["module." + k]) for k in best)


def test_ema_update_warms_up_then_holds_its_decay():
    from digitlab.training.optim import ema_update

    f = ema_update(0.999)
    one, zero = torch.ones(1), torch.zeros(1)
    assert f(zero, one, torch.tensor(0)).item() == pytest.approx(0.9)  # d = 1/10 at the first step
    assert f(zero, one, torch.tensor(10**6)).item() == pytest.approx(0.001)


def test_cli_set_changes_any_field_and_no_test_skips_the_test_set(tmp_path):
    out = tmp_path / "r"
    sets = ["--set", "elastic=3", "--set", "ema=null", "--set", 'model_args={"widths": [4, 8, 8]}']
    res = run_cli("train", "--preset", "fast", "--limit", "400", "--epochs", "1", *sets, "--no-test", "--out", out)
    assert res.returncode == 0, res.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["elastic"] == 3 and config["ema"] is None and config["model_args"] == {"widths": [4, 8, 8]}
    assert "test" not in json.loads((out / "metrics.json").read_text())
    res = run_cli("train", "--preset", "fast", "--set", "turbo=1", "--out", tmp_path / "x")
    assert res.returncode == 1 and "unknown config field(s): turbo" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("train", "--preset", "fast", "--set", "elastic", "--out", tmp_path / "y")
    assert res.returncode == 1 and "--set takes key=value" in res.stderr


def test_cli_variant_is_recorded_and_options_still_win(tmp_path):
    out = tmp_path / "r"
    res = run_cli("train", "--preset", "fast", "--variant", "fp32", "--limit", "400", "--epochs", "1",
                  "--test-limit", "100", "--set", 'model_args={"widths": [4, 8, 8]}', "--out", out)  # fmt: skip
    assert res.returncode == 0, res.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["variant"] == "fp32" and config["batch_size"] == 128 and config["epochs"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "recipe: fast, fp32 variant (epochs=3, batch_size=128)"
    report = (out / "report.md").read_text()
    assert "| Recipe | fast, fp32 variant (epochs=3, batch_size=128) |" in report and "| CPU | " in report
    res = run_cli("train", "--preset", "fast", "--variant", "int4", "--out", tmp_path / "x")
    assert res.returncode != 0 and "choose auto, fp32 or none" in res.stderr and "Traceback" not in res.stderr


def test_resume_never_runs_code_from_a_checkpoint(tmp_path):
    """A run directory from anywhere must not execute its author's code: every checkpoint load is weights-only."""
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    out = tmp_path / "evil"
    (out / "checkpoint").mkdir(parents=True)
    (out / "config.json").write_text(tiny("fast").to_json())
    for name in ("last.pt", "best.pt"):
        with open(out / "checkpoint" / name, "wb") as f:
            pickle.dump({"model": "fast", "state_dict": Payload()}, f)
    res = run_cli("train", "--resume", out)
    assert res.returncode == 1 and "not a safe digitlab checkpoint" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    res = run_cli("predict", out, "--format", "json", str(tmp_path / "x.png"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert not marker.exists()


def epochs_in_history(run_dir: Path) -> list[str]:
    with open(run_dir / "history.csv", newline="") as f:
        return [r["epoch"] for r in csv.DictReader(f)]


def test_a_stop_after_the_last_step_is_clean_and_resume_finishes(tmp_path, mnist):
    out = tmp_path / "r"
    with pytest.raises(Interrupted) as e:  # asked once validation is written: calibration, test and plots left
        train(tiny(), out, dataset=mnist, should_stop=(out / "metrics.json").exists)
    assert e.value.finishing
    assert not (out / "calibration.json").exists() and not (out / "report.md").exists()
    assert torch.load(out / "checkpoint" / "last.pt", weights_only=True)["state"]["done"]
    trained = weights(out)
    r = train(None, out, resume=True, dataset=mnist)  # no training step is redone: only what was left
    assert_same_weights(trained, weights(out))
    assert "test" in r.metrics and (out / "calibration.json").exists() and (out / "plots" / "errors.png").exists()
    assert epochs_in_history(out) == ["1", "2"]


def test_a_signal_during_the_test_evaluation_stops_it_at_once(tmp_path, mnist, monkeypatch):
    import os

    from digitlab.evaluation import pipeline

    def slow_evaluation(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(20)  # a long test evaluation: the stop must not wait for its end
        raise AssertionError("the stop waited for the evaluation to finish")

    monkeypatch.setattr(pipeline, "evaluate_run", slow_evaluation)
    t0 = time.perf_counter()
    with pytest.raises(Interrupted):
        train(tiny(), tmp_path / "r", dataset=mnist)
    assert time.perf_counter() - t0 < 15
    assert not leftover_tmp_files(tmp_path / "r")


def leftover_tmp_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_ctrl_c_after_the_last_epoch_exits_130_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "fast", "--limit", "600", "--epochs", "2", "--batch-size", "64", "--test-limit",
            "200", "--set", 'model_args={"widths": [8, 16, 32]}', "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "digitlab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (out / "metrics.json").exists() and time.time() < deadline:  # validation done, calibration begun
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before the test could stop it"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and f"digitlab train --resume {out}" in stderr and "training is complete" in stderr
    assert not (out / "report.md").exists()
    res = run_cli("train", "--resume", out)
    assert res.returncode == 0, res.stderr
    assert "test" in json.loads((out / "metrics.json").read_text()) and (out / "report.md").exists()
    assert epochs_in_history(out) == ["1", "2"]


KILL_IN_CHECKPOINT_WRITE = """
import os, signal, sys, torch
n, real, calls = int(sys.argv[1]), torch.save, [0]
def save(obj, f, *args, **kwargs):  # the n-th last.pt is written, then the process dies before it is in place
    real(obj, f, *args, **kwargs)
    if isinstance(obj, dict) and "optimizer" in obj:
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
sys.argv = ["digitlab", *sys.argv[2:]]
from digitlab.cli import main
main()
"""


def train_killed_in_checkpoint_write(n: int, out: Path) -> list[str]:
    # no validation split (so no calibration) and no test set: only the training steps and their checkpoints
    args = ["train", "--preset", "fast", "--limit", "600", "--epochs", "3", "--batch-size", "64", "--val-fraction",
            "0", "--no-test", "--set", 'model_args={"widths": [8, 16, 32]}', "--out", str(out)]  # fmt: skip
    res = subprocess.run([sys.executable, "-c", KILL_IN_CHECKPOINT_WRITE, str(n), *args], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == -signal.SIGKILL, res.stderr
    return args


def test_a_kill_inside_a_checkpoint_write_never_duplicates_history(tmp_path):
    out = tmp_path / "r"
    train_killed_in_checkpoint_write(2, out)  # dies writing epoch 2's last.pt: last.pt still says epoch 1
    res = run_cli("train", "--resume", out, "--no-test")
    assert res.returncode == 0, res.stderr
    assert epochs_in_history(out) == ["1", "2", "3"]


def test_a_kill_inside_the_first_checkpoint_write_leaves_a_run_to_start_again(tmp_path):
    out = tmp_path / "r"
    args = train_killed_in_checkpoint_write(1, out)
    res = run_cli("train", "--resume", out)
    assert res.returncode == 1 and "nothing to resume" in res.stderr and "before its first checkpoint" in res.stderr
    res = run_cli(*args)  # the same command again starts clean
    assert res.returncode == 0, res.stderr
    assert epochs_in_history(out) == ["1", "2", "3"]


def test_resuming_an_older_checkpoint_truncates_history_to_it(tmp_path, mnist):
    """Checkpoints written before history lived in last.pt: history.csv is cut back to the checkpoint's epoch."""
    out = tmp_path / "r"
    with pytest.raises(Interrupted):
        train(tiny(epochs=3), out, dataset=mnist, evaluate_test=False, should_stop=(out / "history.csv").exists)
    last = out / "checkpoint" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["state"]["history"], ckpt["state"]["done"]
    torch.save(ckpt, last)
    with open(out / "history.csv", "a", newline="") as f:  # a row appended for an epoch last.pt never reached
        f.write("2,0.5,0.5,,,0.1,1.0\r\n")
    train(None, out, resume=True, dataset=mnist, evaluate_test=False)
    assert epochs_in_history(out) == ["1", "2", "3"]


def test_resume_refuses_options_it_would_ignore(tmp_path):
    res = run_cli("train", "--resume", tmp_path / "r", "--epochs", "5", "--set", "ema=0.9")
    assert res.returncode == 2 and "--epochs, --set cannot change a resumed run" in " ".join(res.stderr.split())
