"""The API's feedback routes end to end: what is stored, every refusal leaving the store unchanged, the API key,
an unreachable store, PostgreSQL, a schemathesis fuzz, and `digitlab serve --workers 2` writing concurrently."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from PIL import Image

from conftest import REPO, run_cli
from digitlab.cli.feedback import serve_feedback_db
from digitlab.core.errors import DigitlabError
from digitlab.data.feedback_store import FeedbackStore
from digitlab.inference.predict import Predictor
from digitlab.serving.api import create_app
from digitlab.serving.settings import API_KEY_ENV, ApiSettings
from test_api import OPERATIONS, check_error, free_port, png_header, run_fuzz, to_png, wait_ready

FEEDBACK_OPERATIONS = [
    ("POST", "/v1/feedback"),
    ("GET", "/v1/feedback/stats"),
    ("DELETE", "/v1/feedback/{feedback_id}"),
]


@pytest.fixture(scope="module")
def run(onnx_run) -> Path:
    return onnx_run


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_run(run, backend="onnx", threads=1)


@contextmanager
def serving(run: Path, predictor: Predictor, url: str, **options) -> Iterator[TestClient]:
    app = create_app(ApiSettings(run=run, feedback_db=url, **options), load=lambda: predictor)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'feedback.db'}"


@pytest.fixture(scope="module")
def digit_png(mnist) -> bytes:
    return to_png(255 - mnist.test.images[0])  # a 7, dark on white


@pytest.fixture(scope="module")
def digit_jpeg(mnist) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(255 - mnist.test.images[1]).resize((112, 112)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def count(url: str) -> int:
    with FeedbackStore.open(url) as store:
        return store.count()


# ------------------------------------------------------------------------------------------------ storing


def test_feedback_is_stored_with_the_servers_own_prediction(run, predictor, db, digit_png, digit_jpeg):
    [want] = predictor.predict(digit_png)
    with serving(run, predictor, db) as c:
        wrong = (want.digit + 1) % 10  # a client that shows (or claims) another answer than the server's
        r = c.post("/v1/feedback", files={"file": ("seven.png", digit_png, "image/png")},
                   data={"label": "7", "session": "tab-1f3e", "prediction": str(wrong)})  # fmt: skip
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"id", "model", "digit", "status", "agreed", "prediction_matches"}
        assert (body["model"], body["digit"], body["status"]) == (run.name, want.digit, want.status)
        assert body["agreed"] is (want.digit == 7) and body["prediction_matches"] is False
        j = c.post("/v1/feedback", json={"image": base64.b64encode(digit_jpeg).decode(), "label": 2})
        assert j.status_code == 201, j.text
        assert j.json()["prediction_matches"] is None
    with FeedbackStore.open(db) as store:
        row = store.get(body["id"])
        assert row.image == digit_png and row.media_type == "image/png"  # the bytes as sent
        assert np.array_equal(row.model_input, want.input)  # the 28x28 the model saw
        assert row.predicted == want.digit and row.probabilities == pytest.approx(want.probabilities, abs=1e-6)
        assert (row.label, row.session, row.source, row.model) == (7, "tab-1f3e", "api", run.name)
        jrow = store.get(j.json()["id"])
        assert jrow.image == digit_jpeg and jrow.media_type == "image/jpeg" and jrow.session is None
        assert store.count() == 2


def test_stats_and_delete(run, predictor, db, digit_png):
    with serving(run, predictor, db) as c:
        ids = [c.post("/v1/feedback", files={"file": ("d.png", digit_png, "image/png")},
                      data={"label": str(label)}).json()["id"] for label in (7, 7, 1)]  # fmt: skip
        r = c.get("/v1/feedback/stats")
        assert r.status_code == 200
        s = r.json()
        with FeedbackStore.open(db) as store:
            want = store.stats()
        assert s["total"] == 3 and s["agreed"] == want.agreed and s["agreement"] == pytest.approx(want.agreement)
        assert [(x["label"], x["count"]) for x in s["by_label"]] == list(enumerate([0, 1, 0, 0, 0, 0, 0, 2, 0, 0]))
        assert s["by_model"] == [{"model": run.name, "count": 3, "agreed": want.agreed, "agreement": want.agreement}]
        r = c.delete(f"/v1/feedback/{ids[0]}")
        assert r.status_code == 204 and r.content == b""
        check_error(c.delete(f"/v1/feedback/{ids[0]}"), 404, "not_found")  # gone
        check_error(c.delete("/v1/feedback/not-an-id"), 404, "not_found")
        assert c.get("/v1/feedback/stats").json()["total"] == 2
    assert count(db) == 2


def multipart(*parts: tuple[str, str | None, bytes]) -> dict:
    """A hand-made multipart body: (name, filename or None, content) per part."""
    chunks = []
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--xyz\r\nContent-Disposition: {disp}\r\n" + ("Content-Type: image/png\r\n" if filename else "")
        chunks.append(head.encode() + b"\r\n" + content + b"\r\n")
    return {
        "content": b"".join(chunks) + b"--xyz--\r\n",
        "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
    }


def test_bad_input_is_refused_and_leaves_the_store_unchanged(run, predictor, db, digit_png):
    png = ("file", "d.png", digit_png)
    b64 = base64.b64encode(digit_png).decode()
    limit = len(digit_png) + 2500  # the body limit: the image and the fields fit, a bigger file does not
    cases = [
        ({"files": {"file": ("d.png", digit_png, "image/png")}, "data": {"label": "10"}}, 422, "invalid_request"),
        ({"files": {"file": ("d.png", digit_png, "image/png")}, "data": {"label": "seven"}}, 422, "invalid_request"),
        ({"files": {"file": ("d.png", digit_png, "image/png")}, "data": {"label": ""}}, 422, "invalid_request"),
        ({"files": {"file": ("d.png", digit_png, "image/png")}}, 422, "invalid_request"),  # no label
        (multipart(("label", None, b"3")), 422, "invalid_request"),  # no file
        (multipart(png, ("file", "e.png", digit_png), ("label", None, b"3")), 422, "invalid_request"),  # two files
        (multipart(png, ("label", None, b"3"), ("lable", None, b"3")), 422, "invalid_request"),  # unknown field
        (multipart(png, ("label", None, b"3"), ("session", None, b"has spaces")), 422, "invalid_request"),
        (multipart(png, ("label", None, b"3"), ("prediction", None, b"12")), 422, "invalid_request"),
        (multipart(("file", "d.png", b"not an image"), ("label", None, b"3")), 400, "invalid_image"),
        (multipart(("file", "d.png", digit_png[:200]), ("label", None, b"3")), 400, "invalid_image"),  # truncated
        (multipart(("file", "huge.png", png_header(20_000, 20_000)), ("label", None, b"3")), 413, "too_many_pixels"),
        (multipart(("file", "d.png", b"x" * limit), ("label", None, b"3")), 413, "body_too_large"),
        ({"files": {"file": ("d.svg", b"<svg/>", "image/svg+xml")}, "data": {"label": "3"}}, 415,
         "unsupported_media_type"),
        ({"content": digit_png, "headers": {"Content-Type": "image/png"}}, 415, "unsupported_media_type"),
        ({"data": {"label": "3"}}, 415, "unsupported_media_type"),  # a urlencoded form: no file
        ({"json": {"image": b64}}, 422, "invalid_request"),  # no label
        ({"json": {"image": b64, "label": "3"}}, 422, "invalid_request"),  # a string
        ({"json": {"image": b64, "label": True}}, 422, "invalid_request"),
        ({"json": {"image": b64, "label": 3.5}}, 422, "invalid_request"),
        ({"json": {"image": b64, "label": -1}}, 422, "invalid_request"),
        ({"json": {"image": b64, "label": 3, "extra": 1}}, 422, "invalid_request"),
        ({"json": {"image": "!!not base64!!", "label": 3}}, 422, "invalid_request"),
        ({"json": {"image": base64.b64encode(b"junk").decode(), "label": 3}}, 400, "invalid_image"),
        ({"json": [1, 2]}, 422, "invalid_request"),
        ({"content": b"[" * 4000, "headers": {"Content-Type": "application/json"}}, 422, "invalid_request"),
    ]  # fmt: skip
    with serving(run, predictor, db, max_body_bytes=limit, pixel_limit=10_000_000) as c:
        for kwargs, status, code in cases:
            check_error(c.post("/v1/feedback", **kwargs), status, code)
        assert c.get("/v1/feedback/stats").json()["total"] == 0
        ok = c.post("/v1/feedback", **multipart(png, ("label", None, b"3"), ("session", None, b"s-1"),
                                                ("prediction", None, b"")))  # fmt: skip
        assert ok.status_code == 201, ok.text  # the same service stores a good one
    assert count(db) == 1


def test_the_api_key_guards_the_feedback_routes(run, predictor, db, digit_png):
    files = {"file": ("d.png", digit_png, "image/png")}
    with serving(run, predictor, db, api_key="k-123") as c:
        check_error(c.post("/v1/feedback", files=files, data={"label": "7"}), 401, "unauthorized")
        check_error(c.get("/v1/feedback/stats"), 401, "unauthorized")
        check_error(c.delete("/v1/feedback/x"), 401, "unauthorized")
        assert count(db) == 0
        r = c.post("/v1/feedback", files=files, data={"label": "7"}, headers={"X-API-Key": "k-123"})
        assert r.status_code == 201
        assert c.get("/v1/feedback/stats", headers={"Authorization": "Bearer k-123"}).json()["total"] == 1
        assert c.delete(f"/v1/feedback/{r.json()['id']}", headers={"X-API-Key": "k-123"}).status_code == 204


def test_an_unreachable_store_is_a_503_and_prediction_still_works(run, predictor, digit_png):
    with serving(run, predictor, "postgresql://nobody@127.0.0.1:1/none") as c:
        files = {"file": ("d.png", digit_png, "image/png")}
        err = check_error(c.post("/v1/feedback", files=files, data={"label": "7"}), 503, "store_unavailable")
        assert "127.0.0.1" not in err["message"]  # the database's address is the operator's, in the log
        check_error(c.get("/v1/feedback/stats"), 503, "store_unavailable")
        assert c.post("/v1/predict", files=files).status_code == 200


def test_without_a_store_there_are_no_feedback_routes(run, predictor, digit_png):
    app = create_app(ApiSettings(run=run), load=lambda: predictor)
    with TestClient(app) as c:
        wait_ready(c)
        check_error(c.post("/v1/feedback", files={"file": ("d.png", digit_png, "image/png")}), 404, "not_found")
        assert not any("feedback" in p for p in c.get("/openapi.json").json()["paths"])


def test_feedback_into_postgresql(run, predictor, pg_url, digit_png):
    with serving(run, predictor, pg_url) as c:
        ids = [c.post("/v1/feedback", files={"file": ("d.png", digit_png, "image/png")},
                      data={"label": str(d), "session": "pg"}).json()["id"] for d in range(3)]  # fmt: skip
        assert c.get("/v1/feedback/stats").json()["total"] == 3
        assert c.delete(f"/v1/feedback/{ids[1]}").status_code == 204
    with FeedbackStore.open(pg_url) as store:
        assert [r.id for r in store.rows(session="pg")] == [ids[0], ids[2]]


# ------------------------------------------------------------------------------------------------ fuzzing


@pytest.fixture(scope="module")
def fuzz_schema(run, predictor, tmp_path_factory):
    from schemathesis.python import asgi

    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'feedback.db'}"
    app = create_app(ApiSettings(run=run, max_batch=4, feedback_db=url), load=lambda: predictor)
    with asgi.get_client(app) as c:
        wait_ready(c)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_fuzz_sees_the_feedback_operations_too(fuzz_schema):
    ops = [r.ok() for r in fuzz_schema.get_all_operations()]
    assert sorted((op.method.upper(), op.path) for op in ops) == sorted(OPERATIONS + FEEDBACK_OPERATIONS)


# Positive and negative requests, except negative GET (no input) and DELETE (its one input, the id in the path, is
# any string: the schema has nothing to violate).
FUZZ_RUNS = [(m, p, mode) for m, p in FEEDBACK_OPERATIONS for mode in ("positive", "negative")
             if mode == "positive" or m == "POST"]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "mode"), FUZZ_RUNS, ids=[f"{m} {p} {mode}" for m, p, mode in FUZZ_RUNS])
def test_fuzz_feedback_no_5xx_and_responses_match_the_schema(fuzz_schema, method, path, mode):
    run_fuzz(fuzz_schema, method, path, mode)


# ------------------------------------------------------------------------------------------------ digitlab serve


def test_serve_chooses_and_checks_its_store(tmp_path, monkeypatch, run):
    assert serve_feedback_db(None, disabled=True) is None
    url = f"sqlite:///{tmp_path / 'given.db'}"
    assert serve_feedback_db(url, disabled=False) == url and (tmp_path / "given.db").is_file()  # migrated
    with pytest.raises(DigitlabError, match="unsupported database"):
        serve_feedback_db("mysql://x/y", disabled=False)
    monkeypatch.delenv("DIGITLAB_FEEDBACK_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert serve_feedback_db(None, disabled=False) == f"sqlite:///{tmp_path / 'xdg' / 'digitlab' / 'feedback.db'}"
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "file"))  # the default cannot be made: serve without it
    assert serve_feedback_db(None, disabled=False) is None
    port = str(free_port())
    res = run_cli("serve", run, "--port", port, "--feedback-db", "postgresql://me:pw@127.0.0.1:1/x")
    assert res.returncode == 1 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "cannot open it" in res.stderr and ":pw@" not in res.stderr


@pytest.mark.slow
def test_serve_with_two_workers_stores_every_acknowledged_row(run, tmp_path, digit_png):
    """`digitlab serve --workers 2` on one SQLite file: 60 posts from 8 threads, all stored; SIGTERM exits 0."""
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != API_KEY_ENV}, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "server.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "digitlab.cli", "serve", str(run), "--port", str(port),
                                 "--workers", "2", "--feedback-db", url], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=f)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.1)

        def post(i: int) -> str:
            r = httpx.post(f"{base}/v1/feedback", files={"file": ("d.png", digit_png, "image/png")},
                           data={"label": str(i % 10), "session": f"s{i % 4}"}, timeout=60)  # fmt: skip
            assert r.status_code == 201, r.text
            return r.json()["id"]

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(post, range(60)))
        assert httpx.get(f"{base}/v1/feedback/stats").json()["total"] == 60
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    with FeedbackStore.open(url) as store:
        assert {r.id for r in store.rows()} == set(ids)
