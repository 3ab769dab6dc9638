"""Load test of the feedback store through the API: concurrent clients posting feedback, every 201 checked in the store.

    OMP_NUM_THREADS=1 python bench/feedback_load.py [RUN] [--workers 2] [--clients 32] [--duration 30]
        [--stores sqlite,postgresql] [--sigterm] [--out FILE.json]

For each store (a new SQLite file; a throw-away PostgreSQL cluster from tests/pg_cluster.py when PostgreSQL is
installed) it starts `digitlab serve RUN --workers N --feedback-db URL` (RUN: the bundled model by default),
waits until every worker answers, then runs --clients asyncio clients that post a 280x280 canvas PNG with a
label and a session id to /v1/feedback as fast as answers come, for --duration seconds. It reports the 201s,
the errors, throughput and latency, then opens the store and checks that the rows are exactly the ids the
201s returned. `--sigterm` sends the server SIGTERM halfway through (the clients go on until it has exited):
every acknowledged row must be in the store, errors are allowed only after the signal (connections refused),
and the server must exit 0. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from api_latency import canvas_png, free_port, machine, summarize_ms, write_json
from api_load import wait_all_workers_ready

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the throw-away PostgreSQL cluster the tests use

from pg_cluster import PgCluster, PgUnavailable  # noqa: E402


@contextmanager
def serving(run: Path, url: str, workers: int, log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`digitlab serve RUN --feedback-db URL` on a free port, every worker ready; killed if still running after."""
    port = free_port()
    cmd = [sys.executable, "-m", "digitlab.cli", "serve", str(run), "--port", str(port), "--workers", str(workers),
           "--feedback-db", url]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("DIGITLAB_API_KEY", None)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"server not ready after 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        wait_all_workers_ready(base)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def load(base: str, proc: subprocess.Popen, clients: int, duration: float, sigterm: bool) -> dict:
    """`clients` loops posting feedback for `duration` s (with `sigterm`: SIGTERM at half time, and on until the
    server has exited). The acknowledged ids, the statuses before and after the signal, the latencies."""
    image = canvas_png()
    acked: list[str] = []
    latencies: list[float] = []
    statuses: dict[str, dict[str, int]] = {"before": {}, "after": {}}
    failures: list[str] = []
    signalled: list[float] = []
    # keepalive_expiry under uvicorn's 5 s keep-alive timeout: a connection left idle that long is dropped here
    # first, not closed by the server just as a request goes out on it (a ReadError that says nothing of the store)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=4.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        end = start + duration

        def running() -> bool:
            return time.perf_counter() < end and (not signalled or proc.poll() is None)

        async def one_client(k: int) -> None:
            i = 0
            while running():
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/feedback", files={"file": ("canvas.png", image, "image/png")},
                                          data={"label": str((k + i) % 10), "session": f"bench-{k}"})  # fmt: skip
                    key = str(r.status_code)
                    if r.status_code == 201:
                        acked.append(r.json()["id"])
                        latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError as e:
                    key = type(e).__name__
                    phase = "after" if signalled else "before"  # as it ended: refused once the signal is sent
                    if len(failures) < 5:
                        failures.append(f"{time.perf_counter() - start:.1f} s ({phase}): {key}: {e!r}")
                    await asyncio.sleep(0.01)  # a refused connection answers at once: do not spin
                else:
                    phase = "after" if signalled else "before"
                statuses[phase][key] = statuses[phase].get(key, 0) + 1
                i += 1

        async def terminator() -> None:
            await asyncio.sleep(duration / 2)
            signalled.append(time.perf_counter() - start)
            proc.send_signal(signal.SIGTERM)

        tasks = [one_client(k) for k in range(clients)] + ([terminator()] if sigterm else [])
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {"acked": acked, "latencies": latencies, "statuses": statuses, "failures": failures,
            "elapsed": elapsed, "sigterm_at_s": round(signalled[0], 2) if signalled else None}  # fmt: skip


def bench_store(name: str, url: str, args: argparse.Namespace, log: Path) -> dict:
    from digitlab.data.feedback_store import FeedbackStore

    with serving(args.run, url, args.workers, log) as (proc, base):
        res = asyncio.run(load(base, proc, args.clients, args.duration, args.sigterm))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(timeout=90)
    with FeedbackStore.open(url, create=False) as store:
        stored = {r.id for r in store.rows()}
    acked = set(res["acked"])
    before, after = res["statuses"]["before"], res["statuses"]["after"]
    errors_before = sum(n for k, n in before.items() if k != "201")
    errors_after = sum(n for k, n in after.items() if k != "201")
    lost = len(acked - stored)
    ok = lost == 0 and errors_before == 0 and exit_code == 0 and len(acked) == len(res["acked"])
    if not args.sigterm:
        ok = ok and stored == acked
    if not ok:  # what the server said about it
        problems = [line for line in log.read_text().splitlines() if '"level": "INFO"' not in line]
        print(f"{name}: server log (not INFO):\n" + "\n".join(problems[-20:]), file=sys.stderr)
    return {"store": name, "acknowledged_201": len(res["acked"]), "errors_before_sigterm": errors_before,
            "errors_after_sigterm": errors_after, "statuses": res["statuses"], "failures": res["failures"],
            "rows_stored": len(stored), "acknowledged_but_missing": lost,
            "stored_but_unacknowledged": len(stored - acked), "duration_s": round(res["elapsed"], 2),
            "sigterm_at_s": res["sigterm_at_s"], "throughput_201_per_s": round(len(res["acked"]) / res["elapsed"], 1),
            **summarize_ms(res["latencies"] or [0.0]), "server_exit_code": exit_code, "ok": ok}  # fmt: skip


def main() -> int:
    from digitlab.core.hardware import cpu_info
    from digitlab.core.rundir import default_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", default=None, help="run directory (default: the bundled model)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--stores", default="sqlite,postgresql", help="which stores (postgresql when installed)")
    parser.add_argument("--sigterm", action="store_true", help="SIGTERM the server halfway through")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: bench/results/feedback_load.json (feedback_load_sigterm.json with --sigterm)",
    )
    args = parser.parse_args()
    args.run = args.run or default_run()
    results_dir = REPO / "bench" / "results"
    args.out = args.out or results_dir / ("feedback_load_sigterm.json" if args.sigterm else "feedback_load.json")

    results, skipped = [], {}
    with tempfile.TemporaryDirectory(prefix="digitlab-feedback-bench-") as tmp:
        for name in args.stores.split(","):
            log = Path(tmp) / f"{name}.log"
            if name == "sqlite":
                results.append(bench_store(name, f"sqlite:///{Path(tmp) / 'feedback.db'}", args, log))
                continue
            try:
                pg = PgCluster.start(durable=True)  # fsync on, as SQLite's synchronous=FULL
            except PgUnavailable as e:
                skipped[name] = str(e)
                print(f"{name}: skipped ({e})")
                continue
            try:
                results.append(bench_store(name, pg.create_database("bench"), args, log))
            finally:
                pg.stop()
    for r in results:
        print(f"{r['store']}: {args.clients} clients x {r['duration_s']} s, {args.workers} workers: "
              f"{r['acknowledged_201']} x 201 ({r['throughput_201_per_s']}/s, p50 {r['p50_ms']:.0f} ms, "
              f"p99 {r['p99_ms']:.0f} ms), errors {r['errors_before_sigterm']} before / "
              f"{r['errors_after_sigterm']} after SIGTERM; rows {r['rows_stored']}, acknowledged but missing "
              f"{r['acknowledged_but_missing']}, exit {r['server_exit_code']} -> "
              f"{'ok' if r['ok'] else 'FAIL'}")  # fmt: skip
    cpu = cpu_info()
    write_json(args.out, {"bench": "feedback_load", "run": str(args.run), "workers": args.workers,
                          "clients": args.clients, "duration_s": args.duration, "sigterm": args.sigterm,
                          "results": results, "skipped": skipped,
                          "machine": {**machine(), "cpu": cpu.describe()}})  # fmt: skip
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
