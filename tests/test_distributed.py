"""torchrun: two CPU processes with gloo train one run directory that the single-process predictor loads."""

import json
import subprocess
import sys

import numpy as np

from digitlab.predict import Predictor


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "digitlab.cli", *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={
        **__import__("os").environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


def test_two_gloo_ranks_train_one_run(tmp_path, mnist):
    out = tmp_path / "ddp"
    res = torchrun("train", "--preset", "fast", "--limit", "1200", "--epochs", "2", "--batch-size", "64",
                   "--test-limit", "200", "--out", out)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 64, "per_rank_batch": 32,
                                "sync_bn": False, "weights_identical": True}  # fmt: skip
    assert 0 <= m["test"]["accuracy"] <= 1
    assert res.stdout.count("epoch   1") == 1  # only rank 0 prints progress
    with open(out / "history.csv") as f:
        assert len(f.readlines()) == 3  # header + 2 epochs, written once
    predictor = Predictor.from_run(out)
    probs = predictor.predict_array(mnist.test.images[:5])
    assert np.allclose(np.asarray(probs).sum(1), 1, atol=1e-5)
