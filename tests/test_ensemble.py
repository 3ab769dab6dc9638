"""Ensembles: two tiny runs averaged into a run directory that predict, export and evaluate accept; the rule; errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from digitlab.core.config import TrainConfig, get_preset
from digitlab.core.errors import ConfigError, RunDirError
from digitlab.evaluation.pipeline import make_ensemble
from digitlab.inference.predict import Predictor
from digitlab.model.forward import load_model
from digitlab.model.networks import EnsembleNet, build_model, count_params
from digitlab.model.scoring import softmax


@pytest.fixture(scope="module")
def members(tiny_run, tmp_path_factory, mnist) -> list[Path]:
    """The tiny run and a second tiny run on the same split (same data, limit, val_fraction and seed: the split is
    drawn from the seed) made different by its architecture, so its initial weights differ too."""
    from digitlab.evaluation.pipeline import train

    root = tmp_path_factory.mktemp("members")
    a = shutil.copytree(tiny_run, root / "a")
    config = get_preset("fast").override(limit=1000, epochs=1, batch_size=64, test_limit=300,
                                         model_args={"widths": [8, 16, 24]})  # fmt: skip
    train(config, root / "b", dataset=mnist)
    return [a, root / "b"]


@pytest.fixture(scope="module")
def ens(members, tmp_path_factory, mnist) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ensemble") / "ens"
    return out, make_ensemble(members, out, dataset=mnist)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_run_directory_layout(ens, members):
    out, metrics = ens
    for name in ("config.json", "metrics.json", "calibration.json", "report.md", "checkpoint/best.pt",
                 "plots/confusion.png", "plots/reliability.png"):  # fmt: skip
        assert (out / name).is_file(), name
    cfg = read(out / "config.json")
    config = TrainConfig.load(out / "config.json")  # what every downstream tool reads
    got = (config.preset, config.model, config.seed, config.limit, config.test_limit, config.tta)
    assert got == ("ensemble", "ensemble", 42, 1000, 300, True)
    member_cfgs = [read(m / "config.json") for m in members]
    assert [e["run"] for e in cfg["ensemble"]["members"]] == [str(m.resolve()) for m in members]
    assert [e["config"] for e in cfg["ensemble"]["members"]] == member_cfgs
    split = {"data": "mnist", "limit": 1000, "val_fraction": 0.1, "split_seed": 42, "n": 100}
    assert cfg["ensemble"]["validation_split"] == split
    specs = config.model_args["members"]
    assert [s["model_args"] for s in specs] == [c["model_args"] for c in member_cfgs]
    assert [s["temperature"] for s in specs] == [read(m / "calibration.json")["temperature"] for m in members]

    ckpt = torch.load(out / "checkpoint" / "best.pt", weights_only=True)
    assert ckpt["model"] == "ensemble" and ckpt["model_args"] == config.model_args
    assert any(k.startswith("members.1.") for k in ckpt["state_dict"])

    member_metrics = [read(m / "metrics.json") for m in members]
    on_disk = read(out / "metrics.json")
    assert on_disk["test"]["accuracy"] == metrics["test"]["accuracy"] and on_disk["test"]["n"] == 300
    assert metrics["params"] == sum(m["params"] for m in member_metrics) == count_params(load_model(out))
    assert metrics["train_seconds"] == pytest.approx(sum(m["train_seconds"] for m in member_metrics), abs=1e-3)
    assert [r["test_accuracy"] for r in metrics["members"]] == [m["test"]["accuracy"] for m in member_metrics]
    assert metrics["val"]["n"] == 100 and 0 <= metrics["val"]["accuracy"] <= 1

    cal = read(out / "calibration.json")
    assert cal["n"] == 100 and cal["temperature"] > 0 and cal["ood"]["threshold"] is not None
    assert metrics["test"]["temperature"] == cal["temperature"]
    report = (out / "report.md").read_text()
    assert "## Ensemble" in report and "chose nothing" in report and "never to choose checkpoints" in report
    assert report.index("## Ensemble") < report.index("## Figures")


def test_probabilities_follow_the_documented_rule(ens, members, mnist):
    """softmax(mean_i(z_i / T_i) / T): each member's (TTA) logits over its own temperature, averaged, over the
    ensemble's temperature."""
    out, _ = ens
    images = mnist.test.images[:16]
    preds = [Predictor.from_run(m) for m in members]
    mean = np.mean([p.logits_array(images) / p.temperature for p in preds], axis=0)
    p = Predictor.from_run(out)
    assert p.tta and p.info["model"] == "ensemble"
    np.testing.assert_allclose(p.predict_array(images), softmax(mean, p.temperature), atol=1e-5)
    results = p.predict(list(images[:4]))  # the full path: preprocessing, temperature, "not a digit" rule
    assert all(r.status in ("ok", "not_a_digit") and len(r.probabilities) == 10 for r in results)


def test_ensemble_net_forward_and_registry():
    specs = [{"model": "fast", "model_args": {"widths": [4, 8, 8]}, "temperature": 2.0},
             {"model": "fast", "model_args": {"widths": [4, 8, 16]}, "temperature": 0.5}]  # fmt: skip
    net = build_model("ensemble", members=specs).eval()
    assert isinstance(net, EnsembleNet) and len(net.members) == 2
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        want = (net.members[0](x) / 2.0 + net.members[1](x) / 0.5) / 2
        assert torch.allclose(net(x), want, atol=1e-6)
    with pytest.raises(ConfigError, match="at least 2"):
        build_model("ensemble", members=specs[:1])
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("ensemble", members=[specs[0], {"model": "nope"}])


def test_onnx_export_is_one_graph_with_parity(ens, tmp_path, mnist):
    pytest.importorskip("onnxruntime")
    from digitlab.inference.export import export_onnx

    run = shutil.copytree(ens[0], tmp_path / "ens")
    entry = export_onnx(run, parity_n=100)
    assert entry["onnx_max_abs_diff"] <= 1e-4 and entry["parity_n"] == 100
    assert sorted(p.name for p in run.glob("*.onnx")) == ["model.onnx"]
    images = mnist.test.images[100:132]
    torch_p = Predictor.from_run(run).predict_array(images)
    onnx_p = Predictor.from_run(run, backend="onnx").predict_array(images)  # with the run's TTA, as served
    assert np.abs(torch_p - onnx_p).max() <= 1e-4


def test_errors(members, tmp_path):
    a, b = members
    with pytest.raises(ConfigError, match="at least 2 runs"):
        make_ensemble([a], tmp_path / "x")
    with pytest.raises(RunDirError, match="no run directory"):
        make_ensemble([a, tmp_path / "missing"], tmp_path / "x")
    with pytest.raises(ConfigError, match="given twice"):
        make_ensemble([a, Path(str(a) + "/")], tmp_path / "x")
    other = shutil.copytree(b, tmp_path / "other-seed")
    cfg = read(other / "config.json")
    (other / "config.json").write_text(json.dumps({**cfg, "seed": 7}))
    with pytest.raises(ConfigError, match=r"share their data and validation split.*seed 7 vs 42"):
        make_ensemble([a, other], tmp_path / "x")
    with pytest.raises(RunDirError, match="already holds a run"):
        make_ensemble([a, b], a)
    assert not (tmp_path / "x").exists()  # nothing written before the checks pass


@pytest.fixture(scope="module")
def other_split(members, tmp_path_factory) -> Path:
    """A copy of a member whose config says it was split with another val_fraction."""
    b = members[1]
    other = shutil.copytree(b, tmp_path_factory.mktemp("other") / "other-split")
    (other / "config.json").write_text(json.dumps({**read(b / "config.json"), "val_fraction": 0.2}))
    return other


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "at least 2 runs, got 0"),
        (("{a}", "{tmp}/missing", "--out", "{tmp}/x"), "no run directory"),
        (("{a}", "{other}", "--out", "{tmp}/x"), "differs from"),
    ],
)
def test_cli_errors_are_one_line(members, other_split, tmp_path, args, message):
    r = run_cli("ensemble", *(s.format(a=members[0], other=other_split, tmp=tmp_path) for s in args))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr and not (tmp_path / "x").exists()


def test_cli_builds_an_ensemble(members, tmp_path):
    from typer.testing import CliRunner

    from digitlab.cli import app

    out = tmp_path / "cli-ens"
    with pytest.raises(ConfigError, match="--out DIR is required"):
        CliRunner().invoke(app, ["ensemble", *map(str, members)], catch_exceptions=False)
    with pytest.raises(ConfigError, match="at least 2 runs, got 1"):
        CliRunner().invoke(app, ["ensemble", str(members[0]), "--out", str(out)], catch_exceptions=False)
    r = CliRunner().invoke(app, ["ensemble", *map(str, members), "--out", str(out), "--no-tta"])
    assert r.exit_code == 0, r.output
    assert "ensemble" in r.output and "report.md" in r.output
    assert TrainConfig.load(out / "config.json").tta is False and (out / "report.md").is_file()


@pytest.fixture(scope="module")
def untrained(members, tmp_path_factory) -> Path:
    """A copy of member a that names every digit wrong (its output layer's rows rolled by one: a 3 is called 4)."""
    run = shutil.copytree(members[0], tmp_path_factory.mktemp("untrained") / "u")
    best = run / "checkpoint" / "best.pt"
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    last = [k for k, v in ckpt["state_dict"].items() if v.ndim == 2 and v.shape[0] == 10][-1]
    ckpt["state_dict"][last] = torch.roll(ckpt["state_dict"][last], 1, dims=0)
    torch.save(ckpt, best)
    return run


def test_select_members_chooses_on_validation_and_leaves_a_useless_run_out(members, untrained, mnist):
    from digitlab.training.ensemble import select_members

    chosen, selection = select_members([untrained, *members], 3, dataset=mnist)
    steps = selection["steps"]
    assert selection["max_members"] == 3 and len(selection["candidates"]) == 3
    assert untrained not in chosen and sorted(chosen) == sorted(members)
    assert [s["members"] for s in steps] == [1, 2]  # the wrong-naming run would have raised the log-loss: stop
    assert all(0 <= s["val_accuracy"] <= 1 for s in steps)
    with pytest.raises(ConfigError, match="at least 2 members"):
        select_members(members, 1, dataset=mnist)


def test_cli_select_records_the_choice(members, untrained, tmp_path):
    out = tmp_path / "selected"
    r = run_cli("ensemble", str(untrained), *map(str, members), "--select", "2", "--no-tta", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    selection = read(out / "metrics.json")["ensemble"]["selection"]
    assert selection["max_members"] == 2 and len(selection["candidates"]) == 3 and len(selection["steps"]) == 2
    members_used = [m["run"] for m in read(out / "metrics.json")["members"]]
    assert str(untrained.resolve()) not in members_used and len(members_used) == 2
    assert "chosen from 3 runs by greedy forward selection" in (out / "report.md").read_text()
