"""torchrun: two CPU processes with gloo train one run directory that the single-process predictor loads; Ctrl-C
stops both ranks cleanly and `--resume` under torchrun finishes the run."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from digitlab.inference.predict import Predictor

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "digitlab.cli"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on a 2-core machine: one thread each


def torchrun(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TORCHRUN, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.mark.slow
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


def rank_pids(out: Path) -> list[int]:
    """Live processes whose command line names `out`: the ranks of that run (torchrun starts each in a session
    of its own, so they are no children of ours to wait for)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not a process
            continue
        if proc.name.isdigit() and str(out).encode() in cmdline.split(b"\0") and int(proc.name) != os.getpid():
            pids.append(int(proc.name))
    return pids


def without_torchrun_traceback(stderr: str) -> str:
    """stderr less torchrun's own report of the signal: its agent re-raises it as a SignalException traceback
    (and so exits 1) once the ranks are down. That is the launcher's output; everything else is ours."""
    head, sep, tail = stderr.rpartition("Traceback (most recent call last):")
    return head if sep and "SignalException: Process" in tail else stderr


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the ranks through /proc")
def test_ctrl_c_stops_every_rank_and_resume_under_torchrun_finishes(tmp_path):
    out = tmp_path / "run"
    # A terminal's Ctrl-C signals its whole foreground process group: here torchrun's group, made ours by a new
    # session. torchrun starts every rank in a session of its own, so the ranks hear it once, from the agent.
    proc = subprocess.Popen(
        [*TORCHRUN, "train", "--preset", "fast", "--limit", "600", "--epochs", "50", "--batch-size", "32",
         "--test-limit", "200", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # a rank that hangs must fail this test, not be SIGKILLed by the agent after its default 30 s
        env={**ENV, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"},
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (out / "history.csv").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)  # usually lands inside epoch 2's steps (the stop there saves mid-epoch); either way must work
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:  # whatever went wrong, leave no process behind (torchrun's own pid is in the list while it lives)
        for pid in rank_pids(out):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert rank_pids(out) == []  # no orphaned rank: the agent waited for both to exit
    assert "forcefully" not in stderr  # ...and they stopped by themselves, not by its SIGKILL
    assert proc.returncode != 0  # torchrun's code for "stopped by a signal" (1); the ranks exit 130
    ours = without_torchrun_traceback(stderr)
    assert "Traceback" not in ours and "KeyboardInterrupt" not in ours, stderr[-3000:]
    said = [line for line in ours.splitlines() if line.startswith("interrupted: checkpoint saved")]
    assert said == [f"interrupted: checkpoint saved; continue with `digitlab train --resume {out}`"]  # rank 0 alone

    ckpt = torch.load(out / "checkpoint" / "last.pt", weights_only=True)
    done = ckpt["state"]["epoch"]
    assert 1 <= done < 50
    assert len(ckpt["rng"]) == 2  # one state per rank: their augmentation and dropout streams differ
    assert not torch.equal(ckpt["rng"][0]["generator"], ckpt["rng"][1]["generator"])
    assert not (out / "metrics.json").exists()

    # finish quickly: the resumed run keeps the saved config, so shorten it through the config file
    cfg = out / "config.json"
    cfg.write_text(cfg.read_text().replace('"epochs": 50', f'"epochs": {done + 1}'))
    res = torchrun("train", "--resume", out)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == done + 1 and m["distributed"]["weights_identical"] is True
    with open(out / "history.csv") as f:
        assert [row.split(",")[0] for row in f.readlines()[1:]] == [str(e) for e in range(1, done + 2)]
