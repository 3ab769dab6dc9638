"""The REST API: every endpoint and error path (TestClient), a schemathesis fuzz run, and the real server end to end."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis import GenerationMode

from conftest import REPO
from digitlab.core.errors import ConfigError, RunDirError
from digitlab.inference.predict import Predictor
from digitlab.serving.api import app_from_env, create_app
from digitlab.serving.observability import JsonFormatter
from digitlab.serving.service import example_png
from digitlab.serving.settings import API_KEY_ENV, SETTINGS_ENV, TTA_ENV, ApiSettings

# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def run(onnx_run) -> Path:
    """The shared tiny run with model.onnx (conftest.onnx_run)."""
    return onnx_run


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_run(run, backend="onnx", threads=1)


def wait_ready(client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "service never became ready"
        time.sleep(0.02)


@contextmanager
def serving(run: Path, predictor: Predictor | None = None, **options) -> Iterator[TestClient]:
    """A started, ready app for ApiSettings(run, **options), sharing `predictor` (no reload per app)."""
    app = create_app(ApiSettings(run=run, **options), load=(lambda: predictor) if predictor else None)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def client(run, predictor) -> Iterator[TestClient]:
    with serving(run, predictor) as c:
        yield c


def to_png(a: np.ndarray | Image.Image, scale: int = 4) -> bytes:
    im = a if isinstance(a, Image.Image) else Image.fromarray(a)
    im = im.resize((im.width * scale, im.height * scale), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def digit_png(mnist) -> bytes:
    return to_png(255 - mnist.test.images[0])  # dark ink on white, as a user sends it


@pytest.fixture(scope="module")
def number_png(mnist) -> bytes:
    row = np.concatenate([np.pad(mnist.test.images[i], 8) for i in (3, 4, 5)], axis=1)
    return to_png(255 - row, scale=2)


BLANK_PNG = to_png(np.full((28, 28), 255, np.uint8))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds none: only a pre-decoding check can refuse it by size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def text_form(**fields: str) -> dict:
    """A multipart body with text fields only (no file parts), as request kwargs."""
    parts = "".join(f'--xyz\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items())
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    return {"content": (parts + "--xyz--\r\n").encode(), "headers": headers}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_error(r, status: int, code: str) -> dict:
    """Every error: the status, JSON {"error": {"code", "message", "request_id"}}, the id also in the header."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    return body["error"]


def check_prediction(body: dict, run: Path) -> None:
    assert set(body) == {"digit", "confidence", "probabilities", "status", "message", "model"}
    assert body["model"] == run.name and body["status"] in ("ok", "not_a_digit")
    assert len(body["probabilities"]) == 10 and sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    if body["status"] == "ok":
        assert body["digit"] == int(np.argmax(body["probabilities"]))
        assert body["confidence"] == max(body["probabilities"])
    else:
        assert body["digit"] is None and body["confidence"] == 0.0 and body["message"]


# ------------------------------------------------------------------------------------------------ endpoints


def test_predict_multipart_json_and_raw_body_agree(client, run, predictor, digit_png):
    ways = [
        {"files": {"file": ("seven.png", digit_png, "image/png")}},
        {"json": {"image": b64(digit_png)}},
        {"json": {"image": "data:image/png;base64," + b64(digit_png)}},  # what a browser canvas gives
        {"json": {"image": base64.urlsafe_b64encode(digit_png).decode().rstrip("=")}},  # url-safe, unpadded
        {"content": digit_png, "headers": {"Content-Type": "image/png"}},
        {"content": digit_png, "headers": {"Content-Type": "application/octet-stream"}},
    ]
    bodies = []
    for kwargs in ways:
        r = client.post("/v1/predict", **kwargs)
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"]
        check_prediction(r.json(), run)
        bodies.append(r.json())
    assert all(b == bodies[0] for b in bodies)
    [direct] = predictor.predict(digit_png)  # the service answers exactly what the predictor does
    assert bodies[0]["probabilities"] == pytest.approx(direct.probabilities, abs=1e-6)


def test_serving_an_onnx_run_never_imports_torch(run, digit_png, tmp_path):
    """The ONNX path needs onnxruntime, not torch: less memory per worker, a faster start, and a predictor that
    runs where torch is not installed. TTA on, so the shifted passes are covered too."""
    (tmp_path / "digit.png").write_bytes(digit_png)
    code = f"""if True:
        import sys
        from fastapi.testclient import TestClient
        from digitlab.serving.api import ApiSettings, create_app
        app = create_app(ApiSettings(run={str(run)!r}, backend="onnx", tta=True))
        with TestClient(app) as client:
            while client.get("/readyz").status_code != 200:
                pass
            r = client.post("/v1/predict", files={{"file": open({str(tmp_path / "digit.png")!r}, "rb")}})
        assert r.status_code == 200 and r.json()["status"] in ("ok", "not_a_digit"), r.text
        print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_predict_blank_canvas_is_empty(client):
    r = client.post("/v1/predict", files={"file": ("blank.png", BLANK_PNG, "image/png")})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "empty" and body["digit"] is None and body["message"]
    assert len(body["probabilities"]) == 10  # refused, with the model's probabilities all the same


def test_batch_one_result_per_file_with_errors_in_place(client, run, digit_png):
    files = [("files", ("a.png", digit_png, "image/png")), ("files", ("blank.png", BLANK_PNG, "image/png")),
             ("files", ("junk.png", b"not an image", "image/png")), ("files", ("v.svg", b"<svg/>", "image/svg+xml")),
             ("files", ("bomb.png", png_header(50_000, 50_000), "image/png")),
             ("files", ("b.png", digit_png, "application/octet-stream"))]  # fmt: skip
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == run.name and body["count"] == len(files) == len(body["results"])
    res = body["results"]
    assert [x["index"] for x in res] == list(range(len(files)))
    assert [x["filename"] for x in res] == [f[1][0] for f in files]
    assert [x["status"] for x in res][:2] == [res[0]["status"], "empty"] and res[0]["status"] != "error"
    assert res[0]["probabilities"] == res[5]["probabilities"] and res[0]["error"] is None
    codes = [x["error"]["code"] if x["error"] else None for x in res]
    assert codes == [None, None, "invalid_image", "unsupported_media_type", "too_many_pixels", None]
    for x in res[2:5]:
        assert x["status"] == "error" and x["digit"] is None and x["message"] == x["error"]["message"]


def test_batch_limits_and_media_type(run, predictor, digit_png):
    with serving(run, predictor, max_batch=2) as c:
        three = [("files", (f"{i}.png", digit_png, "image/png")) for i in range(3)]
        check_error(c.post("/v1/predict/batch", files=three), 413, "too_many_files")
        assert c.post("/v1/predict/batch", files=three[:2]).json()["count"] == 2
        check_error(c.post("/v1/predict/batch", **text_form(note="no files")), 422, "invalid_request")
        check_error(c.post("/v1/predict/batch", json={"image": b64(digit_png)}), 415, "unsupported_media_type")


def test_read_number_left_to_right(client, run, number_png):
    r = client.post("/v1/read", files={"file": ("n.png", number_png, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["model"] == run.name and len(body["text"]) == len(body["digits"]) == 3
    boxes = [d["box"] for d in body["digits"]]
    assert all(b[0] < b[2] and b[1] < b[3] for b in boxes) and boxes[0][2] <= boxes[1][0] <= boxes[2][0]
    for d, ch in zip(body["digits"], body["text"], strict=True):
        assert ch == (str(d["digit"]) if d["status"] == "ok" else "?") and len(d["probabilities"]) == 10
    blank = client.post("/v1/read", content=BLANK_PNG, headers={"Content-Type": "image/png"}).json()
    assert blank["status"] == "empty" and blank["text"] == "" and blank["digits"] == []
    check_error(client.post("/v1/read", json={"image": b64(b"nope")}), 400, "invalid_image")


def test_model_describes_the_run(client, run):
    body = client.get("/v1/model").json()
    metrics = json.loads((run / "metrics.json").read_text())
    cal = json.loads((run / "calibration.json").read_text())
    assert body["run"] == run.name and body["backend"] == "onnx" and body["preset"] == "fast"
    assert body["params"] == metrics["params"] and body["test_accuracy"] == metrics["test"]["accuracy"]
    assert body["calibration"]["temperature"] == cal["temperature"] and body["calibration"]["ece"] == cal["ece_after"]
    assert body["calibration"]["ood"]["threshold"] == cal["ood"]["threshold"]


def test_health_and_readiness_follow_model_loading(run, predictor, digit_png):
    gate = threading.Event()

    def slow_load() -> Predictor:
        assert gate.wait(30)
        return predictor

    with TestClient(create_app(ApiSettings(run=run, wait_for_model=True), load=slow_load)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert check_error(r, 503, "not_ready")["message"] == "model is loading" and r.headers["retry-after"] == "1"
        check_error(c.post("/v1/predict", content=digit_png, headers={"Content-Type": "image/png"}), 503, "not_ready")
        check_error(c.get("/v1/model"), 503, "not_ready")
        gate.set()
        wait_ready(c)
        assert c.get("/readyz").json() == {"status": "ready", "model": run.name, "backend": "onnx"}

    def broken() -> Predictor:
        raise RunDirError(f"no model.onnx in {run}")

    with pytest.raises(RunDirError, match="model.onnx"):  # by default a model that cannot load stops the app
        TestClient(create_app(ApiSettings(run=run), load=broken)).__enter__()
    with TestClient(create_app(ApiSettings(run=run, wait_for_model=True), load=broken)) as c:
        deadline = time.monotonic() + 10
        while "failed" not in (msg := check_error(c.get("/readyz"), 503, "not_ready")["message"]):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert msg == f"model failed to load: no model.onnx in .../{run.name} (retrying)"  # no path: /readyz is open
        assert c.get("/healthz").status_code == 200


def test_metrics_count_requests_latency_and_predictions(client, digit_png):
    client.post("/v1/predict", files={"file": ("a.png", digit_png, "image/png")})
    client.post("/v1/predict", files={"file": ("b.png", BLANK_PNG, "image/png")})
    client.get("/no/such/path")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'digitlab_http_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    bucket = 'digitlab_http_request_duration_seconds_bucket{le="0.01",method="POST",route="/v1/predict",status="200"}'
    assert bucket in text
    assert 'digitlab_http_requests_total{method="GET",route="unmatched",status="404"}' in text  # bounded labels
    assert 'digitlab_predictions_total{digit="none",endpoint="predict",status="empty"}' in text
    assert 'digitlab_inference_duration_seconds_count{endpoint="predict"}' in text
    assert 'digitlab_model_info{backend="onnx",preset="fast",run="run"} 1.0' in text


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"not an image", "headers": {"Content-Type": "image/png"}}, 400, "invalid_image"),
        ({"files": {"file": ("x.png", b"\x89PNG\r\n\x1a\ntruncated", "image/png")}}, 400, "invalid_image"),
        ({"json": {"image": b64(b"GIF89a garbage")}}, 400, "invalid_image"),
        ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "invalid_image"),
        ({"content": png_header(50_000, 50_000), "headers": {"Content-Type": "image/png"}}, 413, "too_many_pixels"),
        ({"content": png_header(7_000, 7_000), "headers": {"Content-Type": "image/png"}}, 413, "too_many_pixels"),
        ({"content": b"abc", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"content": b"abc", "headers": {"Content-Type": ""}}, 415, "unsupported_media_type"),
        ({"content": b"<svg/>", "headers": {"Content-Type": "image/svg+xml"}}, 415, "unsupported_media_type"),
        ({"data": {"file": "abc"}}, 415, "unsupported_media_type"),  # application/x-www-form-urlencoded
        ({"files": {"file": ("x.svg", b"<svg/>", "image/svg+xml")}}, 415, "unsupported_media_type"),
        ({"json": {"image": "data:image/svg+xml;base64,PHN2Zy8+"}}, 415, "unsupported_media_type"),
        ({"content": b'{"image": ', "headers": {"Content-Type": "application/json"}}, 422, "invalid_request"),
        ({"content": b"\xff\xfe", "headers": {"Content-Type": "application/json"}}, 422, "invalid_request"),
        ({"content": b"[" * 200_000, "headers": {"Content-Type": "application/json"}}, 422, "invalid_request"),
        ({"json": ["not", "an", "object"]}, 422, "invalid_request"),
        ({"json": {"img": "abc"}}, 422, "invalid_request"),
        ({"json": {"image": "abc", "extra": 1}}, 422, "invalid_request"),
        ({"json": {"image": ""}}, 422, "invalid_request"),
        ({"json": {"image": 42}}, 422, "invalid_request"),
        ({"json": {"image": "not base64 !!"}}, 422, "invalid_request"),
        ({"json": {"image": "data:image/png,notbase64"}}, 422, "invalid_request"),
        ({"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}}, 422, "invalid_request"),
        ({"content": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}}, 422,
         "invalid_request"),
        ({"files": {"other": ("a.png", BLANK_PNG, "image/png")}, "data": {"x": "1"}}, 200, None),  # any file field
        (text_form(file="just text, no file part"), 422, "invalid_request"),
        ({"files": [("file", ("a.png", BLANK_PNG, "image/png")), ("file", ("b.png", BLANK_PNG, "image/png"))]}, 422,
         "invalid_request"),
    ],
)  # fmt: skip
def test_predict_bad_input_is_never_a_5xx(client, kwargs, status, code):
    r = client.post("/v1/predict", **kwargs)
    if code is None:
        assert r.status_code == status, r.text
    else:
        check_error(r, status, code)


def test_body_size_limit(run, predictor, digit_png):
    with serving(run, predictor, max_body_bytes=len(digit_png) - 1) as c:
        err = check_error(c.post("/v1/predict", content=digit_png, headers={"Content-Type": "image/png"}), 413,
                          "body_too_large")  # fmt: skip
        assert f"limit of {len(digit_png) - 1:,} bytes" in err["message"]
        chunked = c.post("/v1/predict", content=iter([digit_png[:100], digit_png[100:]]),  # no Content-Length
                         headers={"Content-Type": "image/png"})  # fmt: skip
        assert "content-length" not in chunked.request.headers
        check_error(chunked, 413, "body_too_large")
        check_error(c.post("/v1/predict", files={"file": ("a.png", digit_png, "image/png")}), 413, "body_too_large")
        assert c.post("/v1/predict", content=BLANK_PNG, headers={"Content-Type": "image/png"}).status_code == 200


def test_body_limit_stops_reading_early(run, predictor):
    """413 while streaming: the app stops asking for chunks once the limit is passed (never holds the body)."""
    limit, chunk, n = 100_000, 65_536, 64  # a 4 MiB body against a 100 kB limit
    with serving(run, predictor, max_body_bytes=limit) as c:
        app = c.app  # stopped, but still holding its loaded model: the limit comes before any inference
    received, sent = [], []

    async def receive():
        received.append(chunk)
        return {"type": "http.request", "body": b"\0" * chunk, "more_body": len(received) < n}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"image/png")], "client": ("127.0.0.1", 1),
             "server": ("testserver", 80)}  # fmt: skip
    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"])["error"]["code"] == "body_too_large"
    assert sum(received) <= limit + chunk


def test_api_key(run, predictor, digit_png, monkeypatch):
    with serving(run, predictor, api_key="s3cret-key") as c:
        raw = {"content": digit_png, "headers": {"Content-Type": "image/png"}}
        r = c.post("/v1/predict", **raw)
        check_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        wrong = {"Content-Type": "image/png", "X-API-Key": "nope"}
        check_error(c.post("/v1/predict", content=digit_png, headers=wrong), 401, "unauthorized")
        check_error(c.get("/v1/model", headers={"Authorization": "Bearer s3cret-kez"}), 401, "unauthorized")
        check_error(c.get("/v1/model", headers={"X-API-Key": "s3cret-key-and-more"}), 401, "unauthorized")
        assert c.post("/v1/predict", content=digit_png,
                      headers={"Content-Type": "image/png", "X-API-Key": "s3cret-key"}).status_code == 200  # fmt: skip
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert c.get(open_path).status_code == 200
        check_error(c.get("/metrics"), 401, "unauthorized")  # protected unless public_metrics (test_api_limits)
        assert c.get("/metrics", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        schemes = c.get("/openapi.json").json()["components"]["securitySchemes"]
        assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}


def test_a_bug_is_a_500_in_the_same_shape(run, predictor, digit_png):
    class Failing:  # warms up fine, then fails the way a bug would
        info = predictor.info
        calls = 0

        def predict(self, images):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("boom")
            return predictor.predict(images)

    app = create_app(ApiSettings(run=run), load=Failing)
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c)
        r = c.post("/v1/predict", content=digit_png, headers={"Content-Type": "image/png", "X-Request-ID": "bug-1"})
        err = check_error(r, 500, "internal_error")
        assert "boom" not in err["message"] and "bug-1" in err["message"]  # no internals leak out
        assert 'route="/v1/predict",status="500"' in c.get("/metrics").text


def test_not_found_and_wrong_method(client):
    check_error(client.get("/v2/predict"), 404, "not_found")
    r = client.get("/v1/predict")
    check_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]


def test_request_id_is_echoed_or_made(client):
    assert client.get("/healthz", headers={"X-Request-ID": "trace-42.a"}).headers["x-request-id"] == "trace-42.a"
    for bad in ("x" * 200, "has space", "ünicode".encode()):
        rid = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert rid != bad and len(rid) == 32
    a, b = client.get("/healthz"), client.get("/healthz")
    assert a.headers["x-request-id"] != b.headers["x-request-id"]


def test_cors(run, predictor):
    with serving(run, predictor, cors_origins="https://app.example, https://other.example") as c:
        pre = c.options("/v1/predict", headers={"Origin": "https://app.example", "Access-Control-Request-Method":
                                                 "POST", "Access-Control-Request-Headers": "content-type"})  # fmt: skip
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        err = c.post(
            "/v1/predict", content=b"x", headers={"Content-Type": "text/plain", "Origin": "https://app.example"}
        )
        assert err.status_code == 415 and err.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in err.headers["access-control-expose-headers"].lower()
        evil = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in evil.headers
    with serving(run, predictor) as c:  # no origins configured: no CORS headers at all
        assert "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "https://app.example"}).headers


def test_access_log_is_structured(client, caplog, digit_png):
    with caplog.at_level(logging.INFO, logger="digitlab.access"):
        r = client.post("/v1/predict", files={"file": ("a.png", digit_png, "image/png")},
                        headers={"X-Request-ID": "log-test-1", "User-Agent": "pytest"})  # fmt: skip
    [record] = [rec for rec in caplog.records if rec.name == "digitlab.access"]
    line = json.loads(JsonFormatter().format(record))
    assert r.status_code == 200 and line["request_id"] == "log-test-1" and line["level"] == "info"
    assert (line["method"], line["path"], line["route"], line["status"]) == ("POST", "/v1/predict", "/v1/predict", 200)
    assert line["duration_ms"] > 0 and line["user_agent"] == "pytest" and "time" in line


def test_openapi_schema_and_docs(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) == {p for _, p in OPERATIONS}
    body = paths["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/png", "image/jpeg"} <= set(body)
    assert base64.b64decode(body["application/json"]["example"]["image"]) == example_png()
    responses = paths["/v1/predict"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(responses)
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    batch = paths["/v1/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert batch["properties"]["files"]["maxItems"] == 64
    schemas = spec["components"]["schemas"]
    assert schemas["PredictionOut"]["examples"] and schemas["ModelOut"]["examples"]
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()


def test_settings_travel_through_the_environment(run, tmp_path):
    s = ApiSettings(run=run, api_key="k", cors_origins=("https://a.example",), max_batch=8)
    assert ApiSettings.from_env({SETTINGS_ENV: s.to_env()}) == s
    plain = ApiSettings.from_env({SETTINGS_ENV: json.dumps({"run": str(run)}), API_KEY_ENV: "from-env"})
    assert plain.api_key == "from-env" and plain.max_body_bytes == 10 * 1024 * 1024 and plain.max_batch == 64
    assert "from-env" not in repr(plain)
    with pytest.raises(RunDirError, match=SETTINGS_ENV):
        ApiSettings.from_env({})
    assert plain.resolved_backend == "onnx" and ApiSettings(run=tmp_path).resolved_backend == "torch"
    plain.check()
    with pytest.raises(RunDirError, match="no run directory"):
        ApiSettings(run=tmp_path / "missing").check()
    with pytest.raises(RunDirError, match="model.int8.onnx"):
        ApiSettings(run=run, backend="onnx-int8").check()
    from digitlab.core.rundir import RunDir
    from digitlab.inference.predict import BACKENDS

    files = {b: RunDir(run).model_file(b).relative_to(run).as_posix() for b in BACKENDS}  # docs/run-directory.md
    assert files == {"torch": "checkpoint/best.pt", "onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}


def test_cpu_lists_read_as_taskset_writes_them():
    from digitlab.cli.serve import parse_cpus
    from digitlab.core.errors import ConfigError

    assert parse_cpus("1") == {1} and parse_cpus("0,2-3") == {0, 2, 3} and parse_cpus(" 4 , 4-5") == {4, 5}
    for bad in ("", "a", "1-b", "-1", "3-1"):
        with pytest.raises(ConfigError, match="--cpus"):
            parse_cpus(bad)


def test_serve_cli_refuses_before_starting(run, tmp_path):
    """Bad runs, backends and busy ports fail in the CLI process (one line via main()), before any worker starts."""
    from typer.testing import CliRunner

    from digitlab.cli import app
    from digitlab.core.errors import ConfigError, DigitlabError

    with socket.socket() as busy:  # a port something already listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = str(busy.getsockname()[1])
        cases = [
            ([str(tmp_path / "missing")], RunDirError, "no run directory"),
            ([str(run), "--backend", "onnx-int8"], RunDirError, "digitlab export"),
            ([str(run), "--backend", "tensorflow"], ConfigError, "backend"),
            ([str(run), "--port", taken], DigitlabError, "cannot listen"),
            ([str(run), "--cpus", "4095"], ConfigError, "CPU 4095 is not available"),
            ([str(run), "--cpus", "one"], ConfigError, "expected CPU numbers"),
        ]
        for args, error, message in cases:
            result = CliRunner().invoke(app, ["serve", *args])
            assert isinstance(result.exception, error) and message in str(result.exception), (args, result.output)


# ------------------------------------------------------------------------------------------------ fuzzing


@pytest.fixture(scope="module")
def fuzz_app(run, predictor):
    from schemathesis.python import asgi

    app = create_app(ApiSettings(run=run, max_batch=4), load=lambda: predictor)
    with asgi.get_client(app) as c:  # starts the app's lifespan in schemathesis' own event loop
        wait_ready(c)
    return app


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


# Every operation, so that a new route cannot slip past the fuzzer (checked against the schema below). The
# schema's operations are fuzzed through Hypothesis directly (`as_strategy`) rather than schemathesis' pytest
# plugin, whose lazy-fixture loader does not work with pytest 9.2.
OPERATIONS = [("POST", "/v1/predict"), ("POST", "/v1/predict/batch"), ("POST", "/v1/read"), ("GET", "/v1/model"),
              ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("POST", "/v1/admin/reload")]  # fmt: skip
FUZZ_EXAMPLES = 30
# Positive (schema-valid) and negative (schema-violating) requests; the GET operations and the reload take no input.
FUZZ_RUNS = [(m, p, mode) for m, p in OPERATIONS for mode in ("positive", "negative")
             if mode == "positive" or m != "GET" and p != "/v1/admin/reload"]  # fmt: skip


def test_fuzz_covers_every_operation(fuzz_schema):
    ops = [r.ok() for r in fuzz_schema.get_all_operations()]
    assert sorted((op.method.upper(), op.path) for op in ops) == sorted(OPERATIONS)


def run_fuzz(schema, method: str, path: str, mode: str) -> None:
    """Fuzz one operation of `schema` in one generation mode: no 5xx, and every response as the schema says."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    op = schema[path][method]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

    @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)  # fmt: skip
    def fuzz(case):
        case.call_and_validate(checks=checks)

    fuzz()


@pytest.mark.parametrize(("method", "path", "mode"), FUZZ_RUNS, ids=[f"{m} {p} {mode}" for m, p, mode in FUZZ_RUNS])
def test_fuzz_no_5xx_and_responses_match_the_schema(fuzz_schema, method, path, mode):
    run_fuzz(fuzz_schema, method, path, mode)


# ------------------------------------------------------------------------------------------------ real server


def test_tta_setting_from_settings_env_and_cli(run, monkeypatch):
    """Serving runs without test-time augmentation unless told: settings, $DIGITLAB_TTA, `serve --tta`."""
    assert ApiSettings(run=run).tta is False
    env = {SETTINGS_ENV: json.dumps({"run": str(run)})}
    assert ApiSettings.from_env({**env, TTA_ENV: "1"}).tta is True
    assert ApiSettings.from_env({**env, TTA_ENV: "off"}).tta is False
    assert ApiSettings.from_env({**env, TTA_ENV: "run"}).tta is None
    given = {SETTINGS_ENV: json.dumps({"run": str(run), "tta": False}), TTA_ENV: "on"}
    assert ApiSettings.from_env(given).tta is False  # the settings win over the variable
    with pytest.raises(ConfigError, match=TTA_ENV):
        ApiSettings.from_env({**env, TTA_ENV: "maybe"})
    for options, expected in (({}, False), ({"tta": True}, True), ({"tta": None}, True)):  # None: the run's (on)
        with serving(run, **options) as c:
            assert c.get("/v1/model").json()["tta"] is expected, options
    monkeypatch.setenv(SETTINGS_ENV, json.dumps({"run": str(run)}))
    monkeypatch.setenv(TTA_ENV, "true")
    with TestClient(app_from_env()) as c:
        wait_ready(c)
        assert c.get("/v1/model").json()["tta"] is True
    from typer.testing import CliRunner

    from digitlab.cli import app as cli_app

    assert "--no-tta" in CliRunner().invoke(cli_app, ["serve", "--help"]).output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_end_to_end_and_graceful_shutdown(run, tmp_path, digit_png):
    """`digitlab serve --cpus N` in a real process, on that core: predictions over HTTP, JSON logs, then SIGTERM
    with a request in flight: new connections are refused, the in-flight request completes, the process exits 0."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    env = {**{k: v for k, v in os.environ.items() if k != API_KEY_ENV}, "OMP_NUM_THREADS": "1"}  # no key
    cpu = max(os.sched_getaffinity(0))  # --cpus: the server (and its workers) run on this core only
    with log_path.open("w") as log_file:
        # every serving option a deployment sets: --host, --port, --workers, --backend
        proc = subprocess.Popen([sys.executable, "-m", "digitlab.cli", "serve", str(run), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1", "--backend", "onnx", "--cpus", str(cpu)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log_file)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.1)

        assert os.sched_getaffinity(proc.pid) == {cpu}
        r = httpx.post(f"{url}/v1/predict", files={"file": ("a.png", digit_png, "image/png")},
                       headers={"X-Request-ID": "e2e-1"})  # fmt: skip
        assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-1" and "server" not in r.headers
        assert r.json()["model"] == "run" and r.json()["status"] in ("ok", "not_a_digit")
        check_error(httpx.post(f"{url}/v1/predict", content=b"junk", headers={"Content-Type": "image/png"}), 400,
                    "invalid_image")  # fmt: skip
        assert 'route="/v1/predict",status="200"' in httpx.get(f"{url}/metrics").text

        release, started = threading.Event(), threading.Event()
        result: dict = {}

        def slow_body():
            yield digit_png[:64]
            started.set()
            assert release.wait(20)
            yield digit_png[64:]

        def upload():
            try:
                headers = {"Content-Type": "image/png", "X-Request-ID": "in-flight"}
                result["response"] = httpx.post(f"{url}/v1/predict", content=slow_body(), headers=headers, timeout=30)
            except Exception as e:  # reported by the assertion below
                result["error"] = e

        t = threading.Thread(target=upload)
        t.start()
        assert started.wait(10)
        time.sleep(0.3)  # the request is in the server now
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # stops accepting
            try:
                httpx.get(f"{url}/healthz", timeout=0.5)
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        release.set()
        t.join(30)
        assert "error" not in result, result
        assert result["response"].status_code == 200 and result["response"].headers["x-request-id"] == "in-flight"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [x for x in lines if x["logger"] == "digitlab.access"]
    assert {"e2e-1", "in-flight"} <= {x["request_id"] for x in access}
    assert any(x["message"] == "model ready" for x in lines)
    assert all(x.get("status") != 500 for x in access)


def test_a_user_error_while_answering_is_a_400_never_a_500(run, predictor, digit_png):
    """Any DigitlabError (input the library refuses, not only an undecodable image) is the client's: 400."""
    from digitlab.core.errors import ConfigError

    class Refusing:
        def __init__(self, inner: Predictor) -> None:
            self.inner, self.refuse = inner, False

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def predict(self, sources):
            if self.refuse:
                raise ConfigError("refused: not an input this service takes")
            return self.inner.predict(sources)

    stub = Refusing(predictor)
    with serving(run, stub) as c:  # type: ignore[arg-type]
        stub.refuse = True
        r = c.post("/v1/predict", content=digit_png, headers={"Content-Type": "image/png"})
    assert r.status_code == 400, r.text
    assert (
        r.json()["error"]["code"] == "bad_request" and "not an input this service takes" in r.json()["error"]["message"]
    )
