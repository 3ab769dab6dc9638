"""Hot reload: POST /v1/admin/reload and SIGHUP swap the served model (a repointed symlink), in process and in a
real `digitlab serve` with one and two workers; the admin route needs a key; a broken run keeps the old model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from digitlab.core.rundir import load_checkpoint, save_checkpoint
from digitlab.inference.predict import Predictor
from digitlab.serving.api import create_app
from digitlab.serving.settings import ApiSettings
from test_api import free_port, to_png
from test_api_server import serving, wait_ready

KEY = "reload-test-key"
HEADERS = {"X-API-Key": KEY}


def torch_copy(src: Path, dst: Path) -> Path:
    """A copy of run `src` without its ONNX files: served with torch, whose model file is checkpoint/best.pt."""
    out = shutil.copytree(src, dst)
    for name in ("model.onnx", "model.int8.onnx"):
        (out / name).unlink(missing_ok=True)
    return out


def perturbed(src: Path, dst: Path) -> Path:
    """A copy of run `src` whose weights differ a little (another checkpoint, other probabilities)."""
    out = torch_copy(src, dst)
    ckpt = load_checkpoint(out / "checkpoint" / "best.pt")
    ckpt["state_dict"] = {k: v * 1.05 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    save_checkpoint(out / "checkpoint" / "best.pt", ckpt)
    return out


def repoint(link: Path, target: Path) -> None:
    """`ln -sfn target link`, atomically (a new link renamed over the old one)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def runs(tiny_run, tmp_path) -> dict[str, Path]:
    a = torch_copy(tiny_run, tmp_path / "run-a")
    b = perturbed(tiny_run, tmp_path / "run-b")
    broken = torch_copy(tiny_run, tmp_path / "run-broken")
    (broken / "checkpoint" / "best.pt").write_bytes(b"not a checkpoint")
    link = tmp_path / "current"
    link.symlink_to(a)
    return {"a": a, "b": b, "broken": broken, "link": link}


@pytest.fixture(scope="module")
def digit_png(mnist) -> bytes:
    return to_png(255 - mnist.test.images[0])


def test_admin_reload_swaps_the_model_and_a_broken_run_keeps_the_old_one(runs, digit_png):
    with TestClient(create_app(ApiSettings(run=runs["link"], api_key=KEY))) as c:
        m = c.get("/v1/model", headers=HEADERS).json()
        assert m["run"] == "run-a" and m["checkpoint_sha256"] == sha256(runs["a"] / "checkpoint" / "best.pt")
        assert m["created"] and m["created"].endswith("+00:00")
        before = c.post("/v1/predict", content=digit_png, headers={**HEADERS, "Content-Type": "image/png"}).json()
        assert c.post("/v1/admin/reload").status_code == 401  # behind the key
        assert c.post("/v1/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 401
        r = c.post("/v1/admin/reload", headers=HEADERS)
        assert r.status_code == 200 and r.json()["status"] == "unchanged"  # the same run: kept as it is

        repoint(runs["link"], runs["b"])
        r = c.post("/v1/admin/reload", headers=HEADERS)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "reloaded" and body["previous"] == "run-a" and body["model"]["run"] == "run-b"
        assert body["others_signalled"] is False  # one process: no supervisor to tell
        m = c.get("/v1/model", headers=HEADERS).json()
        assert m["run"] == "run-b" and m["checkpoint_sha256"] == sha256(runs["b"] / "checkpoint" / "best.pt")
        after = c.post("/v1/predict", content=digit_png, headers={**HEADERS, "Content-Type": "image/png"}).json()
        assert after["model"] == "run-b" and after["probabilities"] != before["probabilities"]

        repoint(runs["link"], runs["broken"])
        r = c.post("/v1/admin/reload", headers=HEADERS)
        assert r.status_code == 409
        err = r.json()["error"]
        assert err["code"] == "reload_failed" and "still serving run-b" in err["message"]
        assert "\n" not in err["message"] and str(runs["broken"]) not in err["message"]  # one line, no paths
        assert c.get("/v1/model", headers=HEADERS).json()["run"] == "run-b"
        r = c.post("/v1/predict", content=digit_png, headers={**HEADERS, "Content-Type": "image/png"})
        assert r.status_code == 200 and r.json()["model"] == "run-b"
        metrics = c.get("/metrics", headers=HEADERS).text
        assert 'digitlab_model_info{backend="torch",preset="fast",run="run-b"} 1.0' in metrics
        assert 'digitlab_model_info{backend="torch",preset="fast",run="run-a"} 0.0' in metrics


@pytest.mark.parametrize("options", [{"no_auth": True}, {}])
def test_admin_reload_is_refused_without_a_key(runs, options, monkeypatch):
    monkeypatch.delenv("DIGITLAB_API_KEY", raising=False)
    with TestClient(create_app(ApiSettings(run=runs["link"], **options))) as c:
        assert c.get("/v1/model").status_code == 200  # open, as configured
        repoint(runs["link"], runs["b"])
        r = c.post("/v1/admin/reload")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert "--api-key" in r.json()["error"]["message"]
        assert c.get("/v1/model").json()["run"] == "run-a"  # nothing reloaded


def test_a_request_in_flight_finishes_on_the_model_it_started_with(runs, digit_png):
    """The first predictor blocks inside predict() until released; the reload swaps meanwhile."""
    armed, entered, gate, loads = threading.Event(), threading.Event(), threading.Event(), []

    def load() -> Predictor:
        p = Predictor.from_run(runs["link"].resolve())
        if not loads:  # the first model: its warm-up goes through, the first request once armed waits for the gate
            plain = p.predict

            def slow(images):
                if armed.is_set() and not entered.is_set():
                    entered.set()
                    gate.wait(30)
                return plain(images)

            p.predict = slow  # type: ignore[method-assign]
        loads.append(p)
        return p

    with TestClient(create_app(ApiSettings(run=runs["link"], api_key=KEY), load=load)) as c:
        answer: dict = {}

        def request() -> None:
            r = c.post("/v1/predict", content=digit_png, headers={**HEADERS, "Content-Type": "image/png"})
            answer.update(code=r.status_code, body=r.json())

        armed.set()
        t = threading.Thread(target=request)
        t.start()
        assert entered.wait(30)
        repoint(runs["link"], runs["b"])
        r = c.post("/v1/admin/reload", headers=HEADERS)
        assert r.status_code == 200 and r.json()["model"]["run"] == "run-b"
        assert c.get("/v1/model", headers=HEADERS).json()["run"] == "run-b"  # new requests: the new model
        gate.set()
        t.join(30)
        assert answer["code"] == 200 and answer["body"]["model"] == "run-a" and answer["body"]["status"] == "ok"
        assert len(loads) == 2


def test_sighup_in_process_reloads(runs):
    previous = signal.getsignal(signal.SIGHUP)
    try:
        with TestClient(create_app(ApiSettings(run=runs["link"], api_key=KEY))) as c:
            repoint(runs["link"], runs["b"])
            os.kill(os.getpid(), signal.SIGHUP)  # the handler create_app set in this (main) thread
            deadline = time.monotonic() + 30
            while c.get("/v1/model", headers=HEADERS).json()["run"] != "run-b":
                assert time.monotonic() < deadline, "SIGHUP did not reload the model"
                time.sleep(0.05)
    finally:
        signal.signal(signal.SIGHUP, previous)


# ------------------------------------------------------------------------------------------------ real servers


def log_events(log: Path, message: str) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("message", "").startswith(message):
            out.append(event)
    return out


def wait_events(proc, log: Path, message: str, count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(events := log_events(log, message)) < count:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{count} x {message!r} not logged:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    return events


def models_seen(url: str, n: int = 12) -> set[str]:
    """/v1/model over `n` new connections (spread over the workers)."""
    return {httpx.get(f"{url}/v1/model", headers={**HEADERS, "Connection": "close"}).json()["run"] for _ in range(n)}


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_and_admin_reload_reach_every_worker(onnx_run, tmp_path, workers):
    a = shutil.copytree(onnx_run, tmp_path / "run-a")
    b = shutil.copytree(onnx_run, tmp_path / "run-b")
    broken = shutil.copytree(onnx_run, tmp_path / "run-broken")
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    link = tmp_path / "current"
    link.symlink_to(a)
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with serving(link, port, "--workers", str(workers), "--api-key", KEY, "--no-feedback", log=log) as proc:
        wait_ready(proc, url, log)
        wait_events(proc, log, "model ready", workers)
        assert models_seen(url) == {"run-a"}

        repoint(link, b)
        proc.send_signal(signal.SIGHUP)  # to the supervisor with several workers: it forwards to each
        events = wait_events(proc, log, "model reloaded", workers)
        assert len({e["pid"] for e in events}) == workers and {e["run"] for e in events} == {"run-b"}
        assert models_seen(url) == {"run-b"}

        repoint(link, broken)
        proc.send_signal(signal.SIGHUP)
        failed = wait_events(proc, log, "reload failed", workers)
        assert len({e["pid"] for e in failed}) == workers and "still serving run-b" in failed[0]["message"]
        assert models_seen(url) == {"run-b"} and proc.poll() is None

        repoint(link, a)
        r = httpx.post(f"{url}/v1/admin/reload", headers=HEADERS, timeout=30)
        assert r.status_code == 200 and r.json()["model"]["run"] == "run-a"
        assert r.json()["others_signalled"] is (workers > 1)
        events = wait_events(proc, log, "model reloaded", 2 * workers)[workers:]
        assert len({e["pid"] for e in events}) == workers and {e["run"] for e in events} == {"run-a"}
        assert models_seen(url) == {"run-a"}
        assert httpx.post(f"{url}/v1/admin/reload").status_code == 401

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]


def test_perturbed_copy_is_another_model(tiny_run, tmp_path):
    """The fixture's second run really differs (else the swap tests above could not fail)."""
    b = perturbed(tiny_run, tmp_path / "b")
    one = load_checkpoint(Path(tiny_run) / "checkpoint" / "best.pt")["state_dict"]
    two = load_checkpoint(b / "checkpoint" / "best.pt")["state_dict"]
    assert any(not torch.equal(one[k], two[k]) for k in one)
