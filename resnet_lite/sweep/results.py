"""A sweep's results: one row per run from its folder, written as results.csv, results.md and results.png."""
import csv
import io
import json
from pathlib import Path

from ..config import read_yaml
from ..outputs.console import console, fmt_time
from ..outputs.files import read_metrics, write_text
from ..outputs.plots import plot_results
from ..report import REPORT_TABLE
from .plan import _as_run

__all__ = ["collect", "write_results", "print_results"]

COLUMNS = [  # (csv name, markdown header): the report's Table 1 row of the preset, then what ran and what it measured
    ("preset", "preset"), ("report_model", "report model"), ("report_acc", "report acc %"), ("model", "model"),
    ("batch", "batch"), ("optimizer", "optimizer"), ("lr", "lr"), ("epochs", "epochs"), ("best_acc", "best acc %"),
    ("best_epoch", "best epoch"), ("final_acc", "final acc %"), ("params", "params"), ("seconds", "time"),
    ("status", "status")]
MEASURED = COLUMNS[COLUMNS.index(("epochs", "epochs")):]
TEXT_COLUMNS = ("run", "preset", "model", "optimizer", "status")


def _columns(grid) -> list[tuple[str, str]]:
    """The report's Table 1 beside what ran for presets; for a grid the run, its preset and its settings."""
    if not grid:
        return COLUMNS
    return [("run", "run"), ("preset", "preset"), *[(key, key) for key in grid],
            *[("model", "model")] * ("model" not in grid), *MEASURED]


def _report_row(preset: str) -> dict | None:
    return next((r for r in REPORT_TABLE if f"model{r['model']}" == preset), None)


def collect(out_dir, runs, failed: dict | None = None) -> list[dict]:
    """One row per run (a PlannedRun, or a preset's name) from what its directory holds (config.yaml, summary.json,
    metrics.jsonl)."""
    rows = []
    for spec in map(_as_run, runs):
        run, report = Path(out_dir) / spec.name, _report_row(spec.preset) or {}
        row = {"run": spec.name, "preset": spec.preset, "report_model": report.get("model", ""),
               "report_acc": report.get("acc", ""), "model": "", "batch": "", "optimizer": "", "lr": "",
               "epochs": "", "best_acc": "", "best_epoch": "", "final_acc": "", "params": "", "seconds": ""}
        row.update(spec.settings)  # a grid's own values (model=..., even): its columns
        metrics = read_metrics(run / "metrics.jsonl")
        if (run / "summary.json").is_file():
            s = json.loads((run / "summary.json").read_text())
            row.update(epochs=s["epochs"], best_acc=round(100 * s["best_test_acc"], 4), best_epoch=s["best_epoch"],
                       final_acc=round(100 * s["final_test_acc"], 4), params=s["params"],
                       seconds=round(s["total_seconds"], 1), status="finished")
        else:
            row["epochs"] = metrics[-1]["epoch"] if metrics else ""
            row["status"] = "interrupted" if (run / "checkpoints").is_dir() else "not started"
        if (run / "config.yaml").is_file():  # what it ran, the sweep's flags and overrides included
            config = read_yaml(run / "config.yaml")
            optim = config.get("optim") or {}
            ran = {"model": config.get("model", ""), "batch": config.get("batch_size", ""),
                   "optimizer": optim.get("name", ""), "lr": optim.get("lr", "")}
            row.update({k: v for k, v in ran.items() if k not in dict(spec.settings)})
        if failed and spec.name in failed:
            row["status"] = failed[spec.name]
        row["curve"] = [(m["epoch"], 100 * m["test_acc"]) for m in metrics if m.get("test_acc") is not None]
        rows.append(row)
    return rows


def _cell(key, value) -> str:
    if key == "seconds":
        return "" if value == "" else fmt_time(value)
    if key == "params" and value != "":
        return f"{value:,}"
    if key in ("best_acc", "final_acc") and value != "":
        return f"{value:.2f}"
    return str(value)


def write_results(out_dir, rows: list[dict], settings: str, grid=()) -> None:
    """results.csv, results.md and results.png in `out_dir`, each written whole or not at all. grid: the keys whose
    values differ between runs (their columns replace the report's Table 1)."""
    out_dir, columns = Path(out_dir), _columns(grid)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, [key for key, _ in columns], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "results.csv", buffer.getvalue())

    if grid:
        lines = ["# Sweep results", "",
                 f"Settings shared by every run: {settings or 'none (each preset as it is)'}; each run's own are in "
                 f"the columns {', '.join(grid)}. Accuracies are on the test split, time is training time.", ""]
    else:
        lines = ["# Sweep results beside the report's Table 1", "",
                 f"Settings shared by every run: {settings or 'none (each preset as it is)'}. The report columns are "
                 "Table 1 of the report (70 epochs, CIFAR-10); the others are what each run ran and measured: "
                 "accuracies on the test split, time is training time.", ""]
    lines += ["| " + " | ".join(header for _, header in columns) + " |",
              "|" + "|".join("---" if key in TEXT_COLUMNS or key in grid else "---:" for key, _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(key, row[key]) for key, _ in columns) + " |" for row in rows]
    write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    plot_results(rows, out_dir / "results.png")


def _finished(out_dir, name) -> str:
    s = json.loads((Path(out_dir) / name / "summary.json").read_text())
    return (f"{name}: finished, best {100 * s['best_test_acc']:.2f}% final {100 * s['final_test_acc']:.2f}% "
            f"in {fmt_time(s['total_seconds'])}")


def print_results(rows: list[dict], out_dir, grid=()) -> None:
    from rich.table import Table

    table = Table(title=f"{out_dir}/results.md")
    columns = _columns(grid)
    for key, header in columns:
        table.add_column(header, justify="left" if key in TEXT_COLUMNS or key in grid else "right")
    for row in rows:
        table.add_row(*(_cell(k, row[k]) for k, _ in columns))
    console(160).print(table)
