"""What a run reports, and where: the console, Weights & Biases, metrics.jsonl, curves.png and summary.json.

    reporter = Reporter(cfg, run_dir, accelerator, steps_per_epoch=48, state=state)
    reporter.start(ds, rows, params=n, resume=None, notes=[], ...)    # W&B, config.yaml, what runs where
    ... train_one_epoch(..., reporter.progress, ...) with reporter.step_log as the loop's per-step logger
    reporter.record_epoch(rows, schedule)                     # metrics.jsonl, curves.png every CURVES_EVERY s
    reporter.log_epoch(row, step)                             # W&B's row and the console's table row
    summary = reporter.summary(ds, rows, result, raw_result, params=n, initial_weights=None)
    reporter.finish(summary, rows, schedule, result, samples) # summary.json, curves.png, W&B media, the final table

Files and W&B are written by the main process; StepLog runs on every process (each row is all processes' mean).
"""
import dataclasses
import platform
import secrets
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object

from ..config import TrainConfig, to_dict, to_yaml
from ..data.augment import resolve as resolve_augment
from . import rundir
from .console import Progress, print_final
from .files import write_json, write_metrics, write_text
from .plots import plot_curves
from .tracking import StepLog, define_wandb_metrics, log_wandb_final, log_wandb_model, wandb_mode, wandb_settings

__all__ = ["Reporter", "device_name", "versions", "wandb_config", "EMA_WARN"]

CURVES_EVERY = 300.0  # seconds between redraws of curves.png during a run (always drawn at the end)
EMA_WARN = 0.01  # the EMA's final test accuracy this far below the raw weights' gets a warning


class Reporter:
    """The console, W&B and the report files of one run in `run_dir`, whose TrainState `state` keeps the W&B id."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, accelerator, *, steps_per_epoch: int, state):
        self.cfg, self.run_dir, self.accelerator, self.state = cfg, Path(run_dir), accelerator, state
        self.is_main = accelerator.is_main_process
        self.wandb_mode, self.wandb_hint = wandb_mode(cfg.wandb)
        self.steps_per_epoch = steps_per_epoch
        self.progress = Progress(self.is_main, cfg.epochs, steps_per_epoch, done_steps=state.step)
        self.step_log = StepLog(lambda values, step: None, 0)
        self.last_curves = time.perf_counter()

    def start(self, ds, rows: list[dict], *, params: int, resume, notes: list[str], initial_weights,
              replace_earlier: bool) -> None:
        """Open the W&B run (with W&B on), then on the main process write the run's first files (write_start) and
        say what runs where: W&B's console log then holds those lines."""
        cfg, state, accelerator = self.cfg, self.state, self.accelerator
        dataset = {"name": ds.name, "train": len(ds.train), "test": len(ds.test),
                   "val": len(ds.val) if ds.val is not None else 0, "classes": len(ds.classes),
                   "image_size": ds.train.images.shape[-1]}
        if self.wandb_mode != "disabled":
            self._start_wandb(wandb_config(cfg, accelerator, params=params, world_size=accelerator.num_processes,
                                           steps_per_epoch=self.steps_per_epoch, dataset=dataset), ds.val is not None)
        self.write_start(rows, replace_earlier)
        where = f"resuming {resume} at epoch {state.epoch + 1} step {state.step}" if resume else "starting"
        lines = [f"{cfg.model} ({params:,} params) on {accelerator.num_processes} x {device_name(accelerator.device)}, "
                 f"mixed precision {accelerator.mixed_precision}; {ds.name}: {len(ds.train)} train / {len(ds.test)} "
                 f"test images; global batch {cfg.batch_size}, {self.steps_per_epoch} steps per epoch; {where}; run "
                 f"directory {self.run_dir}"]
        if initial_weights and not resume:
            lines.append(f"initial weights: {initial_weights['source']}; {initial_weights['note']}")
        for line in [*lines, *(f"note: {note}" for note in notes), self.wandb_hint]:
            if line:
                self.progress.print(line)

    def _start_wandb(self, config: dict, has_val: bool) -> None:
        """The W&B run (main process; a resume continues it): the resolved config and what the run measured of itself,
        best values in the summary, a history row every wandb.log_every_steps steps; no console redraws (Progress)."""
        import wandb

        state = self.state
        state.wandb_id = state.wandb_id or secrets.token_hex(4)  # kept in checkpoints: a resume continues it
        names = wandb_settings(self.cfg.wandb, self.run_dir)
        self.accelerator.init_trackers(names.pop("project"), config=config, init_kwargs={"wandb": dict(
            names, dir=str(self.run_dir), mode=self.wandb_mode, id=state.wandb_id, resume="allow",
            settings=wandb.Settings(console="wrap"))})  # wraps sys.stdout: not the bar's copy
        if self.is_main:
            define_wandb_metrics(self.accelerator.get_tracker("wandb", unwrap=True), has_val)
        # on every process (each row's loss is all processes' mean); accelerator.log writes on the main one only
        self.step_log = StepLog(self.accelerator.log, self.cfg.wandb.log_every_steps, self.accelerator.num_processes)

    def write_start(self, rows: list[dict], replace_earlier: bool) -> None:
        """Main process, once the inputs are checked: with --overwrite the earlier run's files go (rundir.clear_run);
        config.yaml (output_dir left null: a template for another run) and metrics.jsonl (the rows so far) are
        written."""
        if not self.is_main:
            return
        if replace_earlier and (removed := rundir.clear_run(self.run_dir)):
            self.progress.print(f"starting over in {self.run_dir}: removed the earlier run's {', '.join(removed)}")
        write_text(self.run_dir / rundir.CONFIG,
                   rundir.CONFIG_HEADER + to_yaml(dataclasses.replace(self.cfg, output_dir=None)))
        write_metrics(rows, self.run_dir / rundir.METRICS)

    def record_epoch(self, rows: list[dict], schedule) -> None:
        """metrics.jsonl after every epoch, curves.png at most every CURVES_EVERY seconds (main process)."""
        if not self.is_main:
            return
        write_metrics(rows, self.run_dir / rundir.METRICS)
        if time.perf_counter() - self.last_curves > CURVES_EVERY:
            plot_curves(rows, self.run_dir / rundir.CURVES, self.run_dir.name, schedule())
            self.last_curves = time.perf_counter()

    def log_epoch(self, row: dict, step: int) -> None:
        """The epoch's W&B row (after the per-step rows: W&B drops a row whose step is below the last one's) and the
        console's table row."""
        self.step_log.flush()
        self.accelerator.log({k: v for k, v in row.items() if v is not None}, step=step)
        self.progress.end_epoch(row)

    def summary(self, ds, rows: list[dict], result: dict, raw_result: dict | None, *, params: int,
                initial_weights) -> dict:
        """summary.json's content: the run's final and best accuracies (and the raw weights' beside an EMA, the
        held-out split's with one), its size, time, processes, precision, devices and versions. Every process takes
        part (the devices are gathered)."""
        cfg, state, accelerator = self.cfg, self.state, self.accelerator
        summary = {
            "model": cfg.model, "run_dir": str(self.run_dir), "dataset": ds.name, "epochs": cfg.epochs,
            "steps": state.step, "best_test_acc": state.best["acc"], "best_epoch": state.best["epoch"],
            "final_test_acc": result["acc"], "final_test_loss": result["loss"],
            "per_class_acc": dict(zip(ds.classes, result["per_class"])), "params": params,
            "world_size": accelerator.num_processes, "eval_samples": result["samples"], "total_seconds": state.elapsed,
            "mixed_precision": accelerator.mixed_precision, "devices": gather_object([device_name(accelerator.device)]),
            "versions": versions(), "ema": cfg.ema.enabled, "tta": cfg.tta, "initial_weights": initial_weights,
        }
        if raw_result is not None:
            summary.update(final_test_acc_raw=raw_result["acc"], final_test_loss_raw=raw_result["loss"])
        if ds.val is not None:  # model_best.safetensors is the best epoch on the held-out split
            last_val = next((r["val_acc"] for r in reversed(rows) if r.get("val_acc") is not None), None)
            summary.update(final_val_acc=last_val, best_val_acc=state.best_val["acc"],
                           best_val_epoch=state.best_val["epoch"], test_acc_at_best_val=state.best_val["test_acc"])
        self.classes = list(ds.classes)
        return summary

    def finish(self, summary: dict, rows: list[dict], schedule, result: dict, samples) -> None:
        """summary.json, curves.png, W&B's final media (samples: a callable giving (image, true, predicted, p) tuples)
        and artifacts, the final table, and a warning when the EMA ended below the raw weights (main process)."""
        if not self.is_main:
            return
        write_json(summary, self.run_dir / rundir.SUMMARY)
        plot_curves(rows, self.run_dir / rundir.CURVES, self.run_dir.name, schedule())
        if self.wandb_mode != "disabled":
            run = self.accelerator.get_tracker("wandb", unwrap=True)
            log_wandb_final(run, self.run_dir / rundir.CURVES, result["confusion"], self.classes, samples())
            if self.cfg.wandb.log_model:
                log_wandb_model(run, self.run_dir, {k: summary[k] for k in ("model", "best_test_acc", "best_epoch",
                                                                           "final_test_acc", "epochs", "steps")})
        print_final(summary, self.classes)
        raw = summary.get("final_test_acc_raw")
        if raw is not None and summary["final_test_acc"] < raw - EMA_WARN:
            self.progress.print(
                f"warning: the weight average (EMA) ends {100 * (raw - summary['final_test_acc']):.1f} points below the "
                f"raw weights ({100 * summary['final_test_acc']:.2f}% against {100 * raw:.2f}%); shorten it (lower "
                f"ema.decay, or ema.ramp_power=3) or turn it off (ema.enabled=false)")

    def close(self) -> None:
        self.progress.close()


def versions() -> dict:
    import accelerate
    import timm

    from .. import __version__

    return {"resnet_lite": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux: the CPU's marketing name
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or device.type


def wandb_config(cfg: TrainConfig, accelerator, **measured) -> dict:
    """The W&B run's config: the resolved settings, the augmentation as resolved, and what the run measured of
    itself (params, world size, steps per epoch, dataset, device, versions)."""
    config = dict(to_dict(dataclasses.replace(cfg, mixed_precision=accelerator.mixed_precision)),
                  augment=to_dict(resolve_augment(cfg.augment)))
    config.update(measured, device=device_name(accelerator.device), versions=versions())
    return config
