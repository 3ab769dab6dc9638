"""Load test of the REST API: concurrent clients for a fixed time, errors, throughput and server memory.

    OMP_NUM_THREADS=1 python bench/api_load.py runs/fast [--workers 2] [--clients 32] [--duration 60]
                                              [--out bench/results/api_load.json]

Starts `digitlab serve RUN --workers N` on a free port, warms it up, then runs --clients asyncio clients (one
httpx.AsyncClient, keep-alive connections) that post a 280x280 canvas PNG to /v1/predict as fast as answers come,
for --duration seconds. Reports requests, errors (any non-200 or transport error), throughput, client-side
latency percentiles, the server's RSS (parent and workers together) sampled from start to end, and the server's
exit code after SIGTERM. Pass: 0 errors and RSS growth under --max-rss-growth-mb (no leak); else exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

from api_latency import canvas_png, machine, server, summarize_ms, tree_rss_bytes, write_json


async def load(url: str, image: bytes, clients: int, duration: float, on_sample, sample_every: float) -> dict:
    """`clients` concurrent loops posting `image` until `duration` seconds have passed."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    failures: list[str] = []  # the first few transport errors, for the report
    files = {"file": ("canvas.png", image, "image/png")}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        end = start + duration

        async def one_client() -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", files=files)
                    key = str(r.status_code)
                except httpx.HTTPError as e:
                    key = type(e).__name__
                    if len(failures) < 5:
                        failures.append(f"{time.perf_counter() - start:.1f} s: {key}: {e!r} (cause {e.__cause__!r})")
                latencies.append(time.perf_counter() - t0)
                statuses[key] = statuses.get(key, 0) + 1

        async def sampler() -> None:
            while time.perf_counter() < end:
                await asyncio.sleep(sample_every)
                on_sample(time.perf_counter() - start)

        await asyncio.gather(sampler(), *(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"latencies": latencies, "statuses": statuses, "elapsed": elapsed, "failures": failures}


def wait_all_workers_ready(url: str, consecutive: int = 20, timeout: float = 120.0) -> None:
    """/readyz only speaks for the worker that answers: wait for `consecutive` 200s in a row, each on a new
    connection (the kernel hands new connections to any worker), so that no worker is still loading."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < consecutive:
        if time.monotonic() > deadline:
            raise SystemExit(f"workers not all ready after {timeout:.0f} s")
        with httpx.Client() as c:
            streak = streak + 1 if c.get(f"{url}/readyz").status_code == 200 else 0
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory to serve")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load first")
    parser.add_argument("--backend", default=None, help="onnx, onnx-int8 or torch (default: the server's choice)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0, help="allowed RSS growth during the run")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    image = canvas_png()
    with server(args.run, workers=args.workers, backend=args.backend) as srv:
        url = f"http://127.0.0.1:{srv['port']}"
        wait_all_workers_ready(url)
        rss_ready = tree_rss_bytes(srv["pid"])
        if args.warmup > 0:  # every worker allocates its arenas and thread pools before the baseline is taken
            asyncio.run(load(url, image, args.clients, args.warmup, lambda t: None, 1.0))
        rss = [(0.0, tree_rss_bytes(srv["pid"]))]
        every = max(1.0, args.duration / 12)
        res = asyncio.run(load(url, image, args.clients, args.duration,
                               lambda t: rss.append((round(t, 1), tree_rss_bytes(srv["pid"]))), every))  # fmt: skip
        rss.append((round(res["elapsed"], 1), tree_rss_bytes(srv["pid"])))
        backend = httpx.get(f"{url}/v1/model").json().get("backend")
    n = len(res["latencies"])
    errors = n - res["statuses"].get("200", 0)
    growth_mb = (rss[-1][1] - rss[0][1]) / 2**20
    result = {
        "bench": "api_load", "run": str(args.run), "backend": backend, "workers": args.workers,
        "clients": args.clients, "duration_s": round(res["elapsed"], 2), "requests": n, "errors": errors,
        "statuses": res["statuses"], "failures": res["failures"], "throughput_rps": round(n / res["elapsed"], 1),
        **summarize_ms(res["latencies"]),
        "server_rss_mb": {"ready": round(rss_ready / 2**20, 1), "start": round(rss[0][1] / 2**20, 1),
                          "end": round(rss[-1][1] / 2**20, 1), "growth": round(growth_mb, 1),
                          "samples": [[t, round(b / 2**20, 1)] for t, b in rss]},
        "server_exit_code": srv.get("exit_code"), "machine": machine(),
    }  # fmt: skip
    ok = errors == 0 and growth_mb <= args.max_rss_growth_mb
    print(f"{args.clients} clients x {result['duration_s']} s against {args.workers} worker(s) ({backend}): "
          f"{n} requests, {errors} errors, {result['throughput_rps']} req/s; latency p50 {result['p50_ms']:.1f} ms "
          f"p99 {result['p99_ms']:.1f} ms; server RSS {result['server_rss_mb']['start']} -> "
          f"{result['server_rss_mb']['end']} MiB ({growth_mb:+.1f}); exit code after SIGTERM "
          f"{result['server_exit_code']}; load avg {result['machine']['load_avg_1m']} -> "
          f"{'ok' if ok else 'FAIL'}")  # fmt: skip
    write_json(args.out, result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
