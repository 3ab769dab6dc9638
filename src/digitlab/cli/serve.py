"""`digitlab serve`, `digitlab app` and `digitlab export`: a run as a REST API, as the drawing demo, as ONNX."""

from __future__ import annotations

import os
import socket
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from digitlab.cli.base import TTA_HELP, check_format, console
from digitlab.cli.feedback import DEMO_FEEDBACK_DB_HELP, FEEDBACK_DB_HELP, serve_feedback_db
from digitlab.core.errors import ConfigError, DigitlabError
from digitlab.core.rundir import RunDir, default_run

if TYPE_CHECKING:
    from digitlab.serving.settings import ApiSettings


def export_command(
    run: Path = typer.Argument(..., help="Run directory written by `digitlab train`."),  # noqa: B008
    fmt: str = typer.Option("onnx", "--format", help="onnx (the only format for now)."),
    int8: bool = typer.Option(False, "--int8", help="Also write model.int8.onnx (static int8 quantisation)."),
) -> None:
    """Export a run for the edge: RUN/model.onnx (fp32, dynamic batch), checked against PyTorch."""
    from digitlab.inference.export import export_onnx

    check_format(fmt, ("onnx",))
    with console.status("exporting…") as status:
        entry = export_onnx(run, int8=int8, progress=lambda msg: status.update(f"{msg}…"))
    rd = RunDir(run)
    console.print(f"[bold green]ok[/] {rd.model_file('onnx')}: {entry['onnx_bytes']:,} bytes; max |Δp| vs "
                  f"PyTorch {entry['onnx_max_abs_diff']:.2e} on {entry['parity_n']} test images", highlight=False,
                  soft_wrap=True)  # fmt: skip
    if int8:
        delta = 100 * (entry["int8_test_accuracy"] - entry["torch_test_accuracy"])
        console.print(f"[bold green]ok[/] {rd.model_file('onnx-int8')}: {entry['onnx_int8_bytes']:,} bytes; test "
                      f"accuracy {entry['int8_test_accuracy']:.2%} vs PyTorch {entry['torch_test_accuracy']:.2%} "
                      f"({delta:+.2f} pp, {entry['test_n']:,} images)", highlight=False, soft_wrap=True)  # fmt: skip


def app_command(
    run: Path = typer.Argument(None, metavar="RUN", help="Run directory (default: the bundled model)."),  # noqa: B008
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port to serve on."),
    address: str = typer.Option("localhost", "--address", help="Address to listen on (0.0.0.0: other devices too)."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help=TTA_HELP),
    feedback_db: str | None = typer.Option(
        None, "--feedback-db", envvar="DIGITLAB_FEEDBACK_DB", help=DEMO_FEEDBACK_DB_HELP
    ),
    no_feedback: bool = typer.Option(False, "--no-feedback", help="Run the demo without its feedback buttons."),
) -> None:
    """Start the web app: draw or upload a digit, see the answer, its probabilities and why (Streamlit)."""
    from digitlab.model.forward import load_model

    run = default_run() if run is None else run
    try:  # a missing, incomplete or corrupt run fails here, in one line (torch's load errors span several)
        load_model(RunDir(run).require())
    except DigitlabError as e:
        text = " ".join(str(e).split())
        raise type(e)(text if len(text) <= 300 else text[:299] + "…") from None
    check_port(address, port, reuse=True)  # as Streamlit will: closed connections do not hold the port
    store = serve_feedback_db(feedback_db, no_feedback, without="the feedback buttons")
    script = find_spec("digitlab.serving.demo").origin  # the page's script: Streamlit runs it as __main__
    args = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port), "--server.address",
            address, "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType",
            "none", "--server.runOnSave", "false", "--client.showErrorDetails", "none", "--client.toolbarMode",
            "minimal", "--global.developmentMode", "false"]  # fmt: skip
    console.print(f"[bold]digitlab app[/] {run} → http://{address}:{port}  (Ctrl+C to stop)", highlight=False)
    sys.stdout.flush()
    # the variables app.RUN_ENV, app.TTA_ENV and app_feedback.STORE_ENV name
    env = {k: v for k, v in os.environ.items() if k != "DIGITLAB_APP_FEEDBACK_DB"}
    env.update(DIGITLAB_APP_RUN=str(run.resolve()), DIGITLAB_APP_TTA="1" if tta else "0")
    if store is not None or no_feedback:  # else the page tries the default store and says in one line it cannot
        env["DIGITLAB_APP_FEEDBACK_DB"] = store or ""
    os.execve(sys.executable, args, env)


def parse_cpus(text: str) -> set[int]:
    """CPU numbers from a list such as "1" or "0,2-3" (the format of taskset -c and cpuset)."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"--cpus {text!r}: expected CPU numbers such as 1 or 0,2-3") from None
    if not cpus:
        raise ConfigError(f"--cpus {text!r}: no CPU given")
    return cpus


def pin_to_cpus(text: str) -> None:
    """Restrict this process (and the workers it starts) to the CPUs in `text`.

    One worker's event loop and its inference thread then wake each other on one core instead of across two,
    and caches stay warm: on the 2-core test machine a single client's p50 drops by 0.4-0.7 ms (README).
    """
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("--cpus needs Linux (sched_setaffinity)")
    cpus = parse_cpus(text)
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        missing = ",".join(map(str, sorted(cpus - allowed)))
        raise ConfigError(f"--cpus {text}: CPU {missing} is not available here (have {len(allowed)} CPUs)")
    os.sched_setaffinity(0, cpus)


def serve(
    run: Path | None = typer.Argument(None, help="Run directory to serve (default: the bundled model)."),  # noqa: B008
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: all)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes, each loading the model once."),
    backend: str | None = typer.Option(
        None, "--backend", help="onnx, onnx-int8 or torch (default: onnx when RUN has model.onnx, else torch)."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="DIGITLAB_API_KEY", help="Require this key (X-API-Key or Bearer) on /v1 and /metrics."
    ),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve without an API key on purpose."),
    public_metrics: bool = typer.Option(False, "--public-metrics", help="/metrics answers without the API key."),
    cors_origin: list[str] | None = typer.Option(  # noqa: B008
        None, "--cors-origin", help="Allow this browser origin (repeatable; '*' for any)."
    ),
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", min=0.001, help="Largest request body, in MiB."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, max=1024, help="Most files per /v1/predict/batch."),
    pixel_limit: int | None = typer.Option(None, "--pixel-limit", min=1, help="Most pixels per image."),
    request_pixel_limit: int | None = typer.Option(
        None, "--request-pixel-limit", min=1, help="Most pixels the images of one request hold together."
    ),
    threads: int = typer.Option(1, "--threads", min=1, help="Intra-op threads per model call."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Predictions at once per worker."),
    tta: bool | None = typer.Option(
        None, "--tta/--no-tta", help=f"{TTA_HELP} $DIGITLAB_TTA (on, off, or 'run': the run's config) can set it."
    ),
    graceful_timeout: float = typer.Option(
        30.0, "--graceful-timeout", min=0, help="Seconds to finish in-flight requests after SIGTERM."
    ),
    wait_for_model: bool = typer.Option(
        False, "--wait-for-model", help="Serve before the model loads (/readyz 503, retrying) instead of failing."
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    cpus: str | None = typer.Option(
        None, "--cpus", help="Run the server on these CPU cores only, e.g. 1 or 0,2-3 (Linux; workers share them)."
    ),
    feedback_db: str | None = typer.Option(None, "--feedback-db", envvar="DIGITLAB_FEEDBACK_DB", help=FEEDBACK_DB_HELP),
    no_feedback: bool = typer.Option(False, "--no-feedback", help="Serve without the /v1/feedback routes."),
) -> None:
    """Serve RUN as a REST API (FastAPI + uvicorn): /v1/predict, /v1/predict/batch, /v1/read, /v1/model, /docs.

    Logs are JSON lines on stderr. A model that cannot load stops the server at once (exit 1) unless
    --wait-for-model. SIGTERM stops accepting, finishes the requests already sent and exits 0.
    """
    check_format(log_level, ("debug", "info", "warning", "error"))
    # absolute, not resolved: a RUN that is a symlink is followed anew at each reload (digitlab.serving.reload)
    fields = {"run": (default_run() if run is None else run).absolute(), "backend": backend, "api_key": api_key,
              "no_auth": no_auth, "public_metrics": public_metrics, "wait_for_model": wait_for_model,
              "cors_origins": tuple(cors_origin or ()), "max_body_bytes": max(1, round(max_body_mb * 1024 * 1024)),
              "max_batch": max_batch, "threads": threads, "concurrency": concurrency, "tta": tta,
              "pixel_limit": pixel_limit, "request_pixel_limit": request_pixel_limit}  # fmt: skip
    settings = _api_settings(fields)
    settings = settings.model_copy(update={"feedback_db": serve_feedback_db(feedback_db, no_feedback)})
    if cpus is not None:
        pin_to_cpus(cpus)
    check_port(host, port)
    _run_server(settings, host, port, workers, log_level, graceful_timeout)


def _api_settings(fields: dict[str, Any]) -> ApiSettings:
    """The service's settings from serve's options (None: the default) and the environment, checked: a bad
    option, or (unless wait_for_model) a missing run or model file, fails here in one line, not in every worker."""
    from pydantic import ValidationError

    from digitlab.serving.security import check_api_key
    from digitlab.serving.settings import API_KEY_ENV, TTA_ENV, ApiSettings, tta_setting

    if fields["tta"] is None:
        fields["tta"] = tta_setting(os.environ.get(TTA_ENV) or "off")
    if fields["no_auth"] and (fields["api_key"] or os.environ.get(API_KEY_ENV)):
        raise ConfigError(f"--no-auth with an API key set (--api-key or ${API_KEY_ENV}): drop one of them")
    if fields["api_key"] is None and API_KEY_ENV in os.environ and not fields["no_auth"]:
        check_api_key(os.environ[API_KEY_ENV], f"${API_KEY_ENV}")  # set but empty: refused (Typer reads it as unset)
    for limit in ("pixel_limit", "request_pixel_limit"):
        if fields[limit] is None:
            del fields[limit]
    try:
        settings = ApiSettings(**fields)
    except ValidationError as e:
        raise ConfigError("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None
    if not settings.wait_for_model:
        settings.check()
    return settings


def _run_server(settings: ApiSettings, host: str, port: int, workers: int, log_level: str,
                graceful_timeout: float) -> None:  # fmt: skip
    """uvicorn with `workers` processes, each building the app from $DIGITLAB_API_SETTINGS; returns on SIGTERM."""
    import signal
    import tempfile

    from digitlab.serving.observability import log_config
    from digitlab.serving.server import serve as run_server
    from digitlab.serving.server import server_config
    from digitlab.serving.settings import SETTINGS_ENV

    os.environ[SETTINGS_ENV] = settings.to_env()  # each worker's app_from_env() reads it
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics sums over the workers
        metrics_dir = tempfile.TemporaryDirectory(prefix="digitlab-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
    # uvicorn re-raises SIGTERM once its graceful shutdown is done; a requested stop exits 0, not by the signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    shown = {True: "on", False: "off", None: "as the run"}[settings.tta]
    console.print(f"[bold]digitlab serve[/] {settings.run} ({settings.backend_reason()}; TTA {shown}; "
                  f"{workers} worker(s)) → http://{host}:{port}  (docs: /docs)", highlight=False,
                  soft_wrap=True)  # fmt: skip
    sys.stdout.flush()
    config = server_config("digitlab.serving.api:app_from_env", factory=True, host=host, port=port, workers=workers,
                           log_config=log_config(log_level), log_level=log_level, access_log=False,
                           server_header=False, timeout_graceful_shutdown=graceful_timeout)  # fmt: skip
    try:
        status = run_server(config)
    finally:
        if metrics_dir is not None:
            metrics_dir.cleanup()
    if status != 0:
        raise DigitlabError("the server did not start (the reason is in the log line above)")


def check_port(host: str, port: int, reuse: bool = False) -> None:
    """A one-line error now, not a traceback later, when `host:port` cannot be listened on (`reuse`: with
    SO_REUSEADDR, so connections closed a moment ago do not count)."""
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise DigitlabError(f"cannot listen on {host}:{port} ({e.strerror or e}) — pick another --port") from None
