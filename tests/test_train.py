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
from digitlab.config import get_preset
from digitlab.errors import ConfigError, RunDirError
from digitlab.train import Interrupted, train

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
    from digitlab.config import TrainConfig

    config = TrainConfig.load(tiny_run / "config.json")
    assert config.preset == "fast" and config.limit == 1000 and config.model_args == {"widths": [8, 16, 32]}


def test_split_seed_fixes_the_validation_split_across_run_seeds(mnist):
    from digitlab.train import split_data

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
    from digitlab.train import ema_update

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
