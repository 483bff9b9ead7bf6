"""What a run reports, and where: the console, the trackers (W&B, TensorBoard, ...: log_with), metrics.jsonl,
curves.png and summary.json.

    reporter = Reporter(cfg, run_dir, accelerator, steps_per_epoch=48, state=state)
    reporter.start(ds, rows, params=n, resume=None, notes=[], ...)    # trackers, config.yaml, what runs where
    ... train_one_epoch(..., reporter.progress, ...) with reporter.step_log as the loop's per-step logger
    reporter.record_epoch(rows, schedule)                     # metrics.jsonl, curves.png every CURVES_EVERY s
    reporter.log_epoch(row, step)                             # the trackers' row and the console's table row
    summary = reporter.summary(ds, rows, result, raw_result, params=n, initial_weights=None)
    reporter.finish(summary, rows, schedule, result, samples) # summary.json, curves.png, W&B media, the final table

Files and trackers are written by the main process; StepLog runs on every process (each row is all processes' mean).
"""
import dataclasses
import os
import platform
import secrets
import signal
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object

from ..config import TrainConfig, to_dict, to_yaml
from ..data.augment import resolve as resolve_augment
from ..errors import UserError, first_line
from . import rundir
from .console import Progress, print_final
from .files import write_json, write_metrics, write_text
from .plots import plot_curves
from .sweep_agent import agent_run
from .trackers import PROJECT, build_trackers, flat_config
from .tracking import StepLog, define_wandb_metrics, log_wandb_final, log_wandb_model, wandb_mode, wandb_settings

__all__ = ["Reporter", "device_name", "versions", "wandb_config", "EMA_WARN"]

CURVES_EVERY = 300.0  # seconds between redraws of curves.png during a run (always drawn at the end)
EMA_WARN = 0.01  # the EMA's final test accuracy this far below the raw weights' gets a warning


class Reporter:
    """The console, the trackers and the report files of one run in `run_dir`, whose TrainState `state` keeps the W&B
    id."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, accelerator, *, steps_per_epoch: int, state):
        self.cfg, self.run_dir, self.accelerator, self.state = cfg, Path(run_dir), accelerator, state
        self.is_main = accelerator.is_main_process
        self.wandb_mode, self.wandb_hint = wandb_mode(cfg.wandb) if "wandb" in cfg.log_with else ("disabled", None)
        self.wandb_on = self.wandb_mode != "disabled"
        self.steps_per_epoch = steps_per_epoch
        self.progress = Progress(self.is_main, cfg.epochs, steps_per_epoch, done_steps=state.step)
        self.step_log = StepLog(lambda values, step: None, 0)
        self.last_curves = time.perf_counter()

    def start(self, ds, rows: list[dict], *, params: int, resume, notes: list[str], initial_weights,
              replace_earlier: bool) -> None:
        """Start the trackers (W&B with W&B on), then on the main process write the run's first files (write_start)
        and say what runs where: W&B's console log then holds those lines."""
        cfg, state, accelerator = self.cfg, self.state, self.accelerator
        dataset = {"name": ds.name, "train": len(ds.train), "test": len(ds.test),
                   "val": len(ds.val) if ds.val is not None else 0, "classes": len(ds.classes),
                   "image_size": ds.train.images.shape[-1]}
        if self.wandb_on or set(cfg.log_with) - {"wandb"}:
            config = wandb_config(cfg, accelerator, params=params, world_size=accelerator.num_processes,
                                  steps_per_epoch=self.steps_per_epoch, dataset=dataset)
            self._start_trackers(config, ds.val is not None)
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

    def _start_trackers(self, config: dict, has_val: bool) -> None:
        """The trackers of log_with (main process; W&B only with W&B on): each gets the resolved config and what the
        run measured of itself (flattened for all but W&B), then a history row every wandb.log_every_steps steps;
        W&B also best values in its summary."""
        accelerator = self.accelerator
        names = [name for name in self.cfg.log_with if name != "wandb" or self.wandb_on]
        # tracker objects in log_with are started as they are: the run directory is known only now
        accelerator.log_with = build_trackers(names, self.run_dir, wandb_kwargs=self._wandb_kwargs(),
                                              resumed_at=self.state.step)
        try:
            accelerator.init_trackers(PROJECT)
        except Exception as e:  # a tracker's own configuration (a server, a store, a login) is the user's to fix
            raise UserError(f"the trackers {', '.join(names)} did not all start: {first_line(e, 400)}; fix that "
                            f"tracker's setup or drop it from --log-with") from None
        for tracker in accelerator.trackers:  # the main process's
            tracker.store_init_configuration(config if tracker.name == "wandb" else flat_config(config))
        if self.wandb_on and self.is_main:
            run = accelerator.get_tracker("wandb", unwrap=True)
            self.state.wandb_id = run.id  # the agent's under a sweep: a resume outside it continues that run
            define_wandb_metrics(run, has_val)
        # on every process (each row's loss is all processes' mean); accelerator.log writes on the main one only
        self.step_log = StepLog(accelerator.log, self.cfg.wandb.log_every_steps, accelerator.num_processes)

    def _wandb_kwargs(self) -> dict | None:
        """wandb.init's arguments (a resume continues the run: its id is kept in checkpoints); no console redraws
        (Progress). None with W&B off."""
        if not self.wandb_on:
            return None
        import wandb

        state = self.state
        state.wandb_id = state.wandb_id or secrets.token_hex(4)
        kwargs = dict(wandb_settings(self.cfg.wandb, self.run_dir), dir=str(self.run_dir), mode=self.wandb_mode,
                      id=state.wandb_id, resume="allow",
                      settings=wandb.Settings(console="wrap"))  # wraps sys.stdout: not the bar's copy
        if agent := agent_run():  # the agent's run, as the sweep names it
            kwargs = agent.wandb_kwargs(kwargs, named=bool(self.cfg.wandb.name or os.environ.get("WANDB_NAME")))
        return kwargs

    def mark_preempting(self, signum: int) -> None:
        """A run of a W&B sweep stopped by SIGUSR1 (a preemption's warning, as Slurm's --signal sends it) asks W&B to
        requeue it: an agent then starts it again and it resumes (resnet_lite.outputs.sweep_agent). SIGTERM is how the
        agent itself stops a run (early termination): that one stays stopped."""
        if self.is_main and self.wandb_on and signum == signal.SIGUSR1 and agent_run():
            self.accelerator.get_tracker("wandb", unwrap=True).mark_preempting()

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
            "per_class_acc": dict(zip(ds.classes, result["per_class"], strict=True)), "params": params,
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
        if self.wandb_on:
            run = self.accelerator.get_tracker("wandb", unwrap=True)
            log_wandb_final(run, self.run_dir / rundir.CURVES, result["confusion"], self.classes, samples())
            if self.cfg.wandb.log_model:
                log_wandb_model(run, self.run_dir, {k: summary[k] for k in ("model", "best_test_acc", "best_epoch",
                                                                           "final_test_acc", "epochs", "steps")})
        print_final(summary, self.classes)
        raw = summary.get("final_test_acc_raw")
        if raw is not None and summary["final_test_acc"] < raw - EMA_WARN:
            self.progress.print(
                f"warning: the weight average (EMA) ends {100 * (raw - summary['final_test_acc']):.1f} points "
                f"below the raw weights ({100 * summary['final_test_acc']:.2f}% against {100 * raw:.2f}%); "
                f"shorten it (lower ema.decay, or ema.ramp_power=3) or turn it off (ema.enabled=false)")

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
