"""`digitlab finetune`: a tiny run fine-tuned on synthetic feedback in a temporary SQLite store is a run directory
like any other; the validation split is by whole sessions; overwriting and too little feedback are refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from digitlab.core.errors import DataError, RunDirError
from digitlab.data.feedback_store import FeedbackStore
from digitlab.evaluation.finetune import FinetuneConfig, finetune_run, split_by_session
from digitlab.training.finetune import STYLE, default_steps

STEPS = 12  # enough to change the weights; the tests check the plumbing, bench/finetune_users.py the gain


def fill_store(url: str, mnist, n: int, sessions: int, *, model: str = "tiny", seed: int = 0,
               unsessioned: int = 0) -> None:  # fmt: skip
    """`n` rows of dilated MNIST training digits (a "fat pen"), `sessions` sessions round-robin, then
    `unsessioned` rows without a session; the model's answer is a made-up wrong digit."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    with FeedbackStore.open(url) as store:
        for i in range(n + unsessioned):
            j = int(rng.integers(len(mnist.train)))
            image = ndimage.grey_dilation(mnist.train.images[j], size=(3, 3))
            label = int(mnist.train.labels[j])
            buf = io.BytesIO()
            Image.fromarray(255 - image).save(buf, "PNG")
            store.add(image=buf.getvalue(), model_input=image, label=label, predicted=(label + 1) % 10,
                      probabilities=[0.1] * 10, model=model, source="demo",
                      session=f"user-{i % sessions}" if i < n else None)  # fmt: skip


@pytest.fixture(scope="module")
def store_url(tmp_path_factory, mnist) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('ft') / 'feedback.db'}"
    fill_store(url, mnist, 36, sessions=6, unsessioned=4)  # 40 rows: 6 sessions of 6 and 4 rows on their own
    fill_store(url, mnist, 10, sessions=2, model="other", seed=1)
    return url


@pytest.fixture(scope="module")
def tuned(tiny_run, store_url, tmp_path_factory, mnist):
    out = tmp_path_factory.mktemp("ft-out") / "new"
    ft = FinetuneConfig(feedback=store_url, model="tiny", steps=STEPS, holdout=0.25, seed=3)
    return finetune_run(tiny_run, out, ft, dataset=mnist)


def test_the_new_run_is_a_run_directory_the_predictor_loads(tuned, tiny_run, store_url, mnist):
    from digitlab.core.rundir import RunDir
    from digitlab.inference.predict import Predictor
    from digitlab.model.forward import load_model

    rd = tuned.run
    for path in (rd.config, rd.metrics, rd.calibration, rd.report, rd.best):
        assert path.is_file(), path
    assert not any(p.name.startswith(".") for p in rd.root.parent.iterdir())  # the build folder is gone
    config = rd.read_config()  # type-checked; the parent's data and validation split
    assert (config.data, config.val_fraction, config.limit) == ("mnist", 0.1, 1000)
    doc = json.loads(rd.config.read_text())["finetune"]
    assert doc["parent"]["path"] == str(Path(tiny_run).resolve())
    assert doc["feedback"]["url"] == FeedbackStore.open(store_url).url and "@" not in doc["feedback"]["url"]
    assert doc["feedback"]["rows"] == 40 and doc["feedback"]["model"] == "tiny"  # the other model's rows left out
    assert doc["options"]["steps"] == STEPS and doc["options"]["style"] == STYLE
    p = Predictor.from_run(rd.root)  # calibrated: a "not a digit" rule, no --allow-uncalibrated needed
    [pred] = p.predict(255 - mnist.test.images[0])
    assert pred.status in ("ok", "not_a_digit") and len(pred.probabilities) == 10
    assert p.info["run"] == "new"
    parent, child = load_model(RunDir(tiny_run)), load_model(rd)
    assert any((a != b).any() for a, b in zip(parent.state_dict().values(), child.state_dict().values(), strict=True))


def test_metrics_and_report_compare_before_and_after(tuned, tiny_run):
    m = json.loads(tuned.run.metrics.read_text())
    f = m["finetune"]
    assert m["test"]["n"] == 300 and 0 <= m["test"]["accuracy"] <= 1
    compare = f["compare"]
    parent = json.loads((Path(tiny_run) / "metrics.json").read_text())["test"]
    assert compare["mnist_test"] == {
        "n": 300,
        "before": parent["accuracy"],
        "after": m["test"]["accuracy"],
        "before_from": "parent's metrics.json",
    }  # the same split, the same TTA
    assert compare["feedback_held_out"]["n"] == f["split"]["held_out_rows"]
    assert compare["feedback_trained"]["n"] == f["split"]["train_rows"]
    assert f["split"]["held_out_rows"] + f["split"]["train_rows"] == 40
    assert f["training"]["seconds"] > 0 and "cpu" in m and "precision" in m
    phases = f["phases"]  # where the command's time went, phase by phase (metrics.json sorts the keys)
    assert {"reading the feedback of model tiny", "evaluating on the test set"} <= set(phases)
    training = next(k for k in phases if k.startswith("training "))
    assert phases[training] >= f["training"]["seconds"] - 0.01
    assert sum(phases.values()) <= tuned.seconds + 0.01 * len(phases)  # each one rounded to 0.01 s
    report = tuned.run.report.read_text()
    mnist = f"| MNIST test | 300 | {100 * parent['accuracy']:.2f}% | {100 * m['test']['accuracy']:.2f}% |"
    assert "## Fine-tuning from feedback" in report and mnist in report
    assert f"| held-out feedback ({f['split']['held_out_sessions']} session(s)) |" in report
    # re-evaluating keeps the section (it is written from metrics.json)
    from digitlab.evaluation.evaluate import evaluate_run

    evaluate_run(tuned.run)
    assert "## Fine-tuning from feedback" in tuned.run.report.read_text()


def test_held_out_split_is_by_whole_sessions():
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(2, 60))
        sessions = [f"s{int(rng.integers(1, 9))}" if rng.random() < 0.7 else f"row:{i}" for i in range(n)]
        if len(set(sessions)) < 2:
            continue
        train, held = split_by_session(sessions, 0.2, seed=trial)
        assert len(train) and len(held) and len(train) + len(held) == n
        assert not {sessions[i] for i in train} & {sessions[i] for i in held}  # no session on both sides
        again = split_by_session(sessions, 0.2, seed=trial)  # deterministic for a seed
        assert (again[0] == train).all() and (again[1] == held).all()
    sessions = [f"u{i % 10}" for i in range(100)]
    train, held = split_by_session(sessions, 0.3, seed=1)
    assert len(held) == 30  # whole sessions of 10 until the share is reached
    assert {tuple(split_by_session(sessions, 0.3, seed=s)[1]) for s in range(5)} != {tuple(held)}  # seeds differ
    with pytest.raises(DataError, match="1 session"):
        split_by_session(["only"] * 30, 0.2, seed=0)


def test_default_steps_scale_with_the_feedback():
    assert default_steps(16, 32) == 50 and default_steps(400, 32) == 175 and default_steps(10_000, 32) == 500


def test_distillation_is_zero_on_the_parents_own_answers_and_grows_away_from_them():
    import torch

    from digitlab.core.errors import ConfigError
    from digitlab.training.finetune import _distillation

    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    x = torch.rand(8, 1, 28, 28)
    same = teacher(x).detach()
    assert float(_distillation(same, teacher, x)) == pytest.approx(0, abs=1e-6)
    near, far = (same + s * torch.randn_like(same) for s in (0.5, 3.0))
    assert 0 < float(_distillation(near, teacher, x)) < float(_distillation(far, teacher, x))
    with pytest.raises(ConfigError, match="--distill"):
        FinetuneConfig(distill=-1).check()
    for style in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="--style"):
            FinetuneConfig(style=style).check()


def test_an_existing_output_is_never_overwritten(tiny_run, store_url, tmp_path, mnist):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="already exists"):
        finetune_run(tiny_run, out, FinetuneConfig(feedback=store_url, steps=1), dataset=mnist)
    assert (out / "keep.txt").read_text() == "mine"
    r = run_cli("finetune", tiny_run, "--feedback", store_url, "--out", out, "--steps", "1")
    assert r.returncode == 1 and "already exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_too_little_feedback_is_refused(tiny_run, tmp_path, mnist):
    few = f"sqlite:///{tmp_path / 'few.db'}"
    fill_store(few, mnist, 12, sessions=4)
    r = run_cli("finetune", tiny_run, "--feedback", few, "--out", tmp_path / "a", "--steps", "1")
    assert r.returncode == 1 and "12 usable feedback row(s)" in r.stderr and "at least 20" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    one = f"sqlite:///{tmp_path / 'one.db'}"
    fill_store(one, mnist, 30, sessions=1)
    with pytest.raises(DataError, match="holding one out"):
        finetune_run(tiny_run, tmp_path / "b", FinetuneConfig(feedback=one, steps=1), dataset=mnist)
    with pytest.raises(DataError, match="0 usable"):  # a model id with no feedback
        finetune_run(tiny_run, tmp_path / "c", FinetuneConfig(feedback=one, model="nope", steps=1), dataset=mnist)
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    r = run_cli("finetune", tiny_run, "--feedback", missing, "--out", tmp_path / "d")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "missing.db").exists()


@pytest.mark.slow
def test_cli_prints_one_screen_and_exports_onnx_like_the_parent(onnx_run, store_url, tmp_path):
    out = tmp_path / "cli"
    r = run_cli("finetune", onnx_run, "--feedback", store_url, "--out", out, "--steps", "5", "--model", "tiny",
                "--replay", "0.5", "--holdout", "0.3", "--seed", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "feedback: 40 row(s)" in r.stdout and "MNIST test" in r.stdout and "held-out feedback" in r.stdout
    assert "5 steps of 64 feedback + 64 MNIST" in r.stdout
    assert len(r.stdout.splitlines()) < 30
    assert (out / "model.onnx").is_file()  # the parent has one: NEW is served on the same backend
    spec = json.loads((out / "config.json").read_text())["finetune"]
    assert spec["options"]["replay"] == 0.5 and spec["split"]["holdout"] == 0.3 and spec["split"]["seed"] == 1
