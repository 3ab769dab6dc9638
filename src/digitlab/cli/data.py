"""`digitlab data info|verify|download|export-png`: datasets inspected, checked, fetched and written as images."""

from __future__ import annotations

from pathlib import Path

import typer

from digitlab.cli.base import console

data_app = typer.Typer(no_args_is_help=True, help="Inspect, verify, download and export datasets.")
DATASET_HELP = "A dataset name (mnist, fashion-mnist) or a path (IDX directory, Kaggle CSV, image folder)."


@data_app.command("info")
def data_info(dataset: str = typer.Argument("mnist", help=DATASET_HELP)) -> None:
    """Show a dataset's source, split sizes, class counts and pixel mean/std (pixels scaled to [0, 1])."""
    from rich.table import Table

    from digitlab.data.datasets import NUM_CLASSES, class_counts, load_dataset, pixel_stats

    ds = load_dataset(dataset)
    splits = {"train": ds.train, "test": ds.test}
    table = Table(title=f"dataset: {ds.name}", caption=f"source: {ds.source}", caption_justify="left")
    table.add_column("", style="bold")
    for name in splits:
        table.add_column(name, justify="right")

    def cells(fn) -> list[str]:
        return [fn(split) if split is not None else "-" for split in splits.values()]

    table.add_row("examples", *cells(lambda s: str(len(s))))
    counts = {n: None if s is None or s.labels is None else class_counts(s.labels) for n, s in splits.items()}
    for c in range(NUM_CLASSES):
        table.add_row(f"class {c}", *[("-" if n is None else str(n[c])) for n in counts.values()])
    stats = {name: None if s is None else pixel_stats(s.images) for name, s in splits.items()}
    table.add_row("pixel mean", *[("-" if st is None else f"{st[0]:.4f}") for st in stats.values()])
    table.add_row("pixel std", *[("-" if st is None else f"{st[1]:.4f}") for st in stats.values()])
    console.print(table)


@data_app.command("verify")
def data_verify(dataset: str = typer.Argument("mnist", help=DATASET_HELP)) -> None:
    """Load a dataset with every check (SHA-256 of IDX files included): print 'ok' or the problem (exit 1)."""
    from digitlab.data.datasets import verify_dataset

    ds, checked = verify_dataset(dataset)
    counts = f"train {len(ds.train)}" + ("" if ds.test is None else f", test {len(ds.test)}")
    how = f"{len(checked)} file checksums match" if checked else "structure checked, no checksums to compare"
    line = f"[bold green]ok[/] {ds.name}: {counts}; {how} ({ds.source})"
    console.print(line, highlight=False, soft_wrap=True)


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="mnist or fashion-mnist."),
    directory: str | None = typer.Option(
        None, "--dir", help="Destination folder (default: $DIGITLAB_DATA/NAME, else data/NAME)."
    ),
    mirror: list[str] | None = typer.Option(  # noqa: B008 (typer's documented style)
        None, "--mirror", help="Mirror base URL to try, in order (repeatable); replaces the built-in list."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    timeout: float = typer.Option(30.0, "--timeout", min=1, help="Network timeout in seconds."),
) -> None:
    """Download a dataset's four IDX files (checksums verified, atomic writes) and write SHA256SUMS."""

    from digitlab.data.catalog import project_data_dir
    from digitlab.data.download import download_dataset

    dest = Path(directory) if directory else project_data_dir() / name
    dest = download_dataset(name, dest, mirrors=mirror or None, progress=progress, timeout=timeout)
    console.print(f"[bold green]ok[/] {name} in {dest} (checksums verified)", highlight=False, soft_wrap=True)


@data_app.command("export-png")
def data_export_png(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    out: str = typer.Option(..., "--out", help="New folder to write <label>/<index>.png into."),
    split: str = typer.Option("train", "--split", help="train or test."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Export only the first N images."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write a split as an image folder OUT/<label>/<index>.png (the format the image-folder loader reads)."""

    from digitlab.core.errors import DataError
    from digitlab.data.datasets import export_image_folder, load_dataset

    if split not in ("train", "test"):
        raise typer.BadParameter(f"{split!r} is not one of 'train', 'test'", param_hint="--split")
    ds = load_dataset(dataset)
    chosen = ds.train if split == "train" else ds.test
    if chosen is None:
        raise DataError(f"{dataset}: has no test split; use --split train")
    n = export_image_folder(chosen, Path(out), limit=limit, progress=progress)
    console.print(f"[bold green]ok[/] wrote {n} PNGs to {out}", highlight=False, soft_wrap=True)
