"""Single-image latency of the REST API, measured by a client over loopback.

    OMP_NUM_THREADS=1 python bench/api_latency.py runs/fast [--requests 1000] [--tta on|off] [--image canvas|mnist]
        [--server-cpus 1 --client-cpus 0] [--repeat 15] [--out FILE.json]

Starts `digitlab serve RUN` on a free port (onnxruntime when the run has model.onnx), then posts one 280x280
canvas PNG as multipart field `file` to /v1/predict, one request at a time, each on a new TCP connection
(http.client: little client overhead), and reports p50/p90/p99 client-side latency, the server's RSS and its
exit code after SIGTERM. Target (issue): p50 <= 3 ms, p99 <= 10 ms. Exit code 1 on any failed request.
`--server-cpus` starts the server with `--cpus` (its event loop and inference thread share the cores given);
`--client-cpus` keeps this client on others, so that the two do not take turns on one core.
`--tta` picks the server's test-time augmentation (default off, as `digitlab serve` does; on: five forward
passes per image). `--repeat N` measures N times, each against a fresh server, and reports the median p50 and
how many runs met the target: this VM's speed drifts from minute to minute, so one run is not a result.
The helpers here (server start/stop, canvas PNG, RSS) are shared with bench/api_load.py.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from digitlab.cli.serve import parse_cpus

TARGET_P50_MS, TARGET_P99_MS = 3.0, 10.0


def canvas_png(size: int = 280) -> bytes:
    """What a web canvas sends: a thick dark 7 drawn on a white square, as PNG."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(im)
    s = size / 280
    draw.line([(70 * s, 60 * s), (200 * s, 60 * s), (120 * s, 230 * s)], fill="black", width=round(18 * s),
              joint="curve")  # fmt: skip
    draw.line([(105 * s, 145 * s), (175 * s, 145 * s)], fill="black", width=round(14 * s))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def mnist_png() -> bytes:
    """The first official MNIST test digit as a 28x28 greyscale PNG (already MNIST format: not re-framed)."""
    from PIL import Image

    from digitlab.data.datasets import load_dataset

    buf = io.BytesIO()
    Image.fromarray(load_dataset("mnist").test.images[0]).save(buf, "PNG")
    return buf.getvalue()


IMAGES = {"canvas": ("280x280 canvas PNG", canvas_png), "mnist": ("28x28 MNIST test digit PNG", mnist_png)}


def multipart(field: str, filename: str, data: bytes, content_type: str = "image/png") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()  # fmt: skip
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (uvicorn's workers), from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return total


def _get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@contextmanager
def server(run: Path, *, workers: int = 1, backend: str | None = None, extra: list[str] | None = None,
           ready_timeout: float = 120.0) -> Iterator[dict]:  # fmt: skip
    """`digitlab serve RUN` on a free port, ready; yields {"port", "pid", "log"}; SIGTERM on exit (the exit
    code lands in the dict as "exit_code"; the server's log file is removed after a clean exit)."""
    port = free_port()
    cmd = [sys.executable, "-m", "digitlab.cli", "serve", str(run), "--port", str(port), "--workers", str(workers)]
    if backend:
        cmd += ["--backend", backend]
    cmd += extra or []
    log = Path(tempfile.mkstemp(prefix="digitlab-serve-", suffix=".log")[1])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env=env)
    info = {"port": port, "pid": proc.pid, "log": str(log)}
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if _get(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"server not ready after {ready_timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        info["exit_code"] = proc.returncode
        if proc.returncode == 0:  # kept (and named in the error) when the server failed
            log.unlink(missing_ok=True)


def scrape(port: int, family: str, labels: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram series from /metrics, e.g. ("digitlab_inference_duration_seconds",
    'endpoint="predict"')."""
    text = _get(port, "/metrics")[1].decode()
    values = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            prefix = f"{family}_{part}{{"
            if line.startswith(prefix) and labels in line:
                values[part] = values.get(part, 0.0) + float(line.rsplit(" ", 1)[1])
    return values.get("sum", 0.0), values.get("count", 0.0)


def timed_requests(port: int, n: int, method: str, path: str, body: bytes | None, headers: dict) -> list[tuple]:
    """(seconds, status) of n requests, each on a new connection (status 0: transport error)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            status = r.status
        except OSError:
            status = 0
        finally:
            conn.close()
        out.append((time.perf_counter() - t0, status))
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def summarize_ms(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in seconds)
    return {"p50_ms": round(percentile(ms, 50), 3), "p90_ms": round(percentile(ms, 90), 3),
            "p99_ms": round(percentile(ms, 99), 3), "mean_ms": round(statistics.fmean(ms), 3),
            "max_ms": round(ms[-1], 3)}  # fmt: skip


def machine() -> dict:
    return {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "python": sys.version.split()[0]}


def write_json(path: Path | None, result: dict) -> None:
    """Save a benchmark's figures when --out was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory to serve")
    parser.add_argument("--requests", type=int, default=1000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests first")
    parser.add_argument("--backend", default=None, help="onnx, onnx-int8 or torch (default: the server's choice)")
    parser.add_argument("--endpoint", default="/v1/predict", help="/v1/predict or /v1/read")
    parser.add_argument("--tta", choices=["on", "off"], default="off", help="the server's test-time augmentation")
    parser.add_argument(
        "--image",
        choices=list(IMAGES),
        default="canvas",
        help="canvas: the target's 280x280 canvas PNG; mnist: a 28x28 MNIST digit PNG (no re-framing: "
        "what the HTTP path and the model cost without the canvas's decoding and preprocessing)",
    )
    parser.add_argument("--server-cpus", default=None, help="`digitlab serve --cpus`: the server's cores, e.g. 1")
    parser.add_argument("--client-cpus", default=None, help="this client's cores, e.g. 0 (Linux)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="measure N times, each against a fresh server; report every run and the median p50 "
        "(this VM's speed drifts by +-0.5 ms from minute to minute: one run is not a result)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    runs = []
    for i in range(args.repeat):
        runs.append(measure(args))
        report(args, runs[-1], f"run {i + 1}/{args.repeat}: " if args.repeat > 1 else "")
    result = runs[-1] if args.repeat == 1 else summarize_runs(runs)
    write_json(args.out, result)
    return 1 if any(r["errors"] for r in runs) else 0


def measure(args: argparse.Namespace) -> dict:
    """One measurement: a fresh server, warm-up, `args.requests` timed requests, then /healthz and RSS."""
    body, content_type = multipart("file", "image.png", IMAGES[args.image][1]())
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close"}
    extra = ["--tta" if args.tta == "on" else "--no-tta"] + (["--cpus", args.server_cpus] if args.server_cpus else [])
    own_cpus = os.sched_getaffinity(0)
    with server(args.run, backend=args.backend, extra=extra) as srv:
        if args.client_cpus:  # now, so that an unpinned server does not inherit the client's cores
            os.sched_setaffinity(0, parse_cpus(args.client_cpus))
        port = srv["port"]
        rss_start = tree_rss_bytes(srv["pid"])
        model = json.loads(_get(port, "/v1/model")[1])
        timed_requests(port, args.warmup, "POST", args.endpoint, body, headers)
        endpoint = args.endpoint.rsplit("/", 1)[-1]
        inf0 = scrape(port, "digitlab_inference_duration_seconds", f'endpoint="{endpoint}"')
        srv0 = scrape(port, "digitlab_http_request_duration_seconds", f'route="{args.endpoint}",status="200"')
        rows = timed_requests(port, args.requests, "POST", args.endpoint, body, headers)
        inf1 = scrape(port, "digitlab_inference_duration_seconds", f'endpoint="{endpoint}"')
        srv1 = scrape(port, "digitlab_http_request_duration_seconds", f'route="{args.endpoint}",status="200"')
        health = timed_requests(port, min(args.requests, 300), "GET", "/healthz", None, {"Connection": "close"})
        rss_end = tree_rss_bytes(srv["pid"])
    os.sched_setaffinity(0, own_cpus)  # the next run's server must not inherit the client's cores
    times = [t for t, _ in rows]
    statuses: dict[int, int] = {}
    for _, status in rows:
        statuses[status] = statuses.get(status, 0) + 1

    def mean_ms(a: tuple[float, float], b: tuple[float, float]) -> float | None:
        return round(1000 * (b[0] - a[0]) / (b[1] - a[1]), 3) if b[1] > a[1] else None

    figures = summarize_ms(times)
    return {
        "bench": "api_latency", "run": str(args.run), "backend": model.get("backend"), "tta": model.get("tta"),
        "endpoint": args.endpoint,
        "image": f"{IMAGES[args.image][0]}, multipart, new connection per request", "requests": len(times),
        "errors": len(rows) - statuses.get(200, 0), "statuses": {str(k): v for k, v in sorted(statuses.items())},
        **figures,
        "target": {"p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS},
        "meets_target": figures["p50_ms"] <= TARGET_P50_MS and figures["p99_ms"] <= TARGET_P99_MS,
        "breakdown_mean_ms": {"server_request": mean_ms(srv0, srv1), "decode_preprocess_model": mean_ms(inf0, inf1),
                              "healthz_roundtrip_p50": summarize_ms([t for t, _ in health])["p50_ms"]},
        "server_rss_mb": {"start": round(rss_start / 2**20, 1), "end": round(rss_end / 2**20, 1)},
        "server_exit_code": srv.get("exit_code"), "machine": machine(),
        "cpus": {"server": args.server_cpus or "any", "client": args.client_cpus or "any"},
    }  # fmt: skip


def report(args: argparse.Namespace, result: dict, prefix: str = "") -> None:
    verdict = "met" if result["meets_target"] else "MISSED"
    rss = result["server_rss_mb"]
    print(f"{prefix}{args.endpoint} ({result['backend']}, TTA {args.tta}), {result['requests']} requests, new "
          f"connection each: p50 {result['p50_ms']:.2f} ms  p90 {result['p90_ms']:.2f} ms  p99 "
          f"{result['p99_ms']:.2f} ms  (target p50 <= {TARGET_P50_MS:g}, p99 <= {TARGET_P99_MS:g}: {verdict}); "
          f"errors {result['errors']}; server RSS {rss['start']} -> {rss['end']} MiB; exit code after SIGTERM "
          f"{result['server_exit_code']}; load avg {result['machine']['load_avg_1m']}; cores: server "
          f"{result['cpus']['server']}, client {result['cpus']['client']}", flush=True)  # fmt: skip
    print(
        "mean server time per request {server_request} ms, of which decoding + preprocessing + model "
        "{decode_preprocess_model} ms; GET /healthz round trip p50 {healthz_roundtrip_p50} ms (HTTP and framework "
        "overhead)".format(**result["breakdown_mean_ms"]),
        flush=True,
    )


def summarize_runs(runs: list[dict]) -> dict:
    """The series: every run's p50/p99, the median p50 and how many runs met the target; the last run in full."""
    p50s = [r["p50_ms"] for r in runs]
    summary = {
        "runs": len(runs), "p50_ms_median": round(statistics.median(p50s), 3),
        "p50_ms_range": [min(p50s), max(p50s)], "p99_ms_max": max(r["p99_ms"] for r in runs),
        "runs_meeting_target": sum(r["meets_target"] for r in runs), "errors": sum(r["errors"] for r in runs),
        "p50_ms_each": p50s, "p99_ms_each": [r["p99_ms"] for r in runs],
    }  # fmt: skip
    print(f"{len(runs)} runs: p50 median {summary['p50_ms_median']:.2f} ms (range {min(p50s):.2f}-{max(p50s):.2f}); "
          f"p99 at most {summary['p99_ms_max']:.2f} ms; target met in {summary['runs_meeting_target']} of "
          f"{len(runs)}; errors {summary['errors']}")  # fmt: skip
    return {**runs[-1], "series": summary}


if __name__ == "__main__":
    sys.exit(main())
