"""The Trainer: one run, built in named steps, then fit() (the epochs), saves, stops and the final files.

    with stop_signals() as flag, accelerator_session(...) as accelerator, rundir.claimed(...) as run_dir:
        summary = Trainer(cfg, accelerator, run_dir, resume="runs/x/checkpoints/step-00000120.pt", stop_flag=flag).fit()

Building: check the inputs (cheap errors first) -> data -> model (and restore its weights) -> the loop's parts
(optimizer, schedule, augmentation) -> restore the rest of a checkpoint -> loggers. The network has one name per role:
`model` the plain network being trained, `wrapped` what the training steps call (model behind DDP and/or
torch.compile), `evaluated` the module whose weights are evaluated and saved (the EMA's when enabled, else model),
`evaluator` the callable an evaluation runs (evaluated, compiled, behind test-time augmentation).
"""
import dataclasses
import functools
import os
import platform
import secrets
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

from .. import __version__
from .. import hooks
from ..outputs import rundir
from ..data.augment import build_augment
from ..data.images import build_normalize
from ..data.augment import resolve as resolve_augment
from ..outputs.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from ..outputs.weights import save_weights
from ..config import TrainConfig, to_dict, to_yaml
from ..data.loader import DeviceLoader
from ..data.sources import load_data
from .ema import build_ema
from .distributed import average_bn_stats
from .engine import EpochResult, Loop, evaluate_loader, train_one_epoch
from ..errors import UserError
from ..outputs.files import read_metrics, write_json, write_metrics, write_text
from ..outputs.console import Progress, print_final
from ..outputs.tracking import StepLog, define_wandb_metrics, log_wandb_final, log_wandb_model, wandb_mode, wandb_settings
from ..models.lite import create_model
from ..models.tools import count_params
from .optim import build_optimizer, build_scheduler
from ..models.pretrained import initial_model, pretrained_source, resolve_weights_file
from ..outputs.plots import plot_curves
from .signals import NonFiniteLoss, Preempted, StopCheck, StopFlag
from .state import TrainState, rank_extras, restore_rank_extras, rng_state, set_rng_state
from ..models.tta import TTA

__all__ = ["Trainer"]

CURVES_EVERY = 300.0  # seconds between redraws of curves.png during a run (always drawn at the end)
WANDB_SAMPLES = 32  # test images in the W&B table of sample predictions
EMA_WARN = 0.01  # the EMA's final test accuracy this far below the raw weights' gets a warning


class Trainer:
    """Train as `cfg` says on `accelerator`, continuing from the checkpoint file `resume` when given.

    fit() returns the summary; it raises Preempted after a stop signal (a checkpoint was saved: resume it) and
    NonFiniteLoss (nothing was saved after the last good checkpoint); both end every process at the same step."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, run_dir, resume=None,
                 stop_flag: StopFlag | None = None, overwrite: bool = False):
        """run_dir: the folder this process may write, claimed by the caller (resnet_lite.outputs.rundir.claimed); resume: the
        checkpoint file to continue; overwrite: the folder holds an earlier run whose files go once the inputs are
        checked."""
        self.accelerator, self.resume, self.overwrite = accelerator, resume, overwrite
        self.stop_flag = stop_flag or StopFlag()
        self.rank, self.world, self.device = accelerator.process_index, accelerator.num_processes, accelerator.device
        self.is_main = accelerator.is_main_process
        self.wandb_mode, self.wandb_hint = wandb_mode(cfg.wandb)
        checkpoint = load_checkpoint(resume) if resume else None
        self.run_dir = Path(run_dir)
        if cfg.initial_checkpoint and not checkpoint:  # config.yaml names the very file (a run's weights)
            cfg = dataclasses.replace(cfg, initial_checkpoint=str(resolve_weights_file(cfg.initial_checkpoint)))
        self.cfg = cfg = dataclasses.replace(cfg, output_dir=str(self.run_dir))
        self._check_inputs(checkpoint)
        set_seed(cfg.seed)
        self._load_data()
        self._build_model(checkpoint)
        self._build_loop()
        self.state, self.rows, self.schedule_note = TrainState(), [], None
        if checkpoint:
            self._restore(checkpoint)
        self._start_logging()

    # ------------------------------------------------------------------------------------------ building

    def _check_inputs(self, checkpoint: dict | None) -> None:
        """The mistakes that need no data: a launcher Accelerate cannot see, settings this machine cannot run, an
        unknown model, a checkpoint of another run, a run directory that cannot be written."""
        cfg, resume = self.cfg, self.resume
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.world == 1:  # every process would train the whole set alone into one run directory
            raise UserError(f"the launcher started {launched} processes (WORLD_SIZE) but Accelerate sees one; launch "
                            f"with `accelerate launch --multi_gpu` (GPUs) or `--config_file launch/cpu.yaml` (CPU), or "
                            f"torchrun")
        if cfg.sync_bn and self.world > 1 and self.device.type == "cpu":
            raise UserError("sync_bn=true needs GPUs (torch's SyncBatchNorm has no CPU kernel); set sync_bn=false")
        with torch.device("meta"):  # an unknown model fails now, not after a download
            create_model(cfg.model)
        if cfg.pretrained and not checkpoint:
            pretrained_source(cfg.model, cfg.pretrained_path)  # models without weights, a missing file
        if checkpoint and checkpoint["config"]["model"] != cfg.model:
            raise UserError(f"checkpoint {resume} is of {checkpoint['config']['model']}, not {cfg.model}; resume with "
                            f"the run's own model, or start a new run in another --output-dir")
        if checkpoint and checkpoint["batch"] and checkpoint["config"]["batch_size"] != cfg.batch_size:
            raise UserError(f"checkpoint {resume} stopped mid-epoch at batch_size={checkpoint['config']['batch_size']}; "
                            f"resume with that batch size (an epoch boundary checkpoint may change it)")

    def _load_data(self) -> None:
        cfg, rank, world, device = self.cfg, self.rank, self.world, self.device
        with self.accelerator.main_process_first():  # one download, the others then read it
            self.ds = ds = load_data(cfg.data)
        self.num_classes, self.image_size = len(ds.classes), ds.train.images.shape[-1]
        self.train_loader = DeviceLoader(ds.train, cfg.batch_size, device=device, train=True, rank=rank,
                                         world_size=world, seed=cfg.seed, drop_last=cfg.drop_last)
        self.test_loader = DeviceLoader(ds.test, cfg.eval_batch_size, device=device, train=False, rank=rank,
                                        world_size=world)
        self.val_loader = None if ds.val is None else DeviceLoader(ds.val, cfg.eval_batch_size, device=device,
                                                                   train=False, rank=rank, world_size=world)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise UserError(f"{len(ds.train)} training images make no batch of {cfg.batch_size}; lower --batch-size")

    def _build_model(self, checkpoint: dict | None) -> None:
        cfg, resume = self.cfg, self.resume
        if checkpoint and checkpoint.get("classes", self.ds.classes) != self.ds.classes:
            raise UserError(f"checkpoint {resume} was trained on {len(checkpoint['classes'])} classes, the data "
                            f"{cfg.data.spec} has {self.num_classes} ({', '.join(self.ds.classes[:5])}...); resume "
                            f"with the run's own data, or start a new run in another --output-dir")
        with self.accelerator.main_process_first():  # one download of pretrained weights, the others then read it
            # a resumed run restores its own weights: the starting ones are neither downloaded nor loaded again
            model, self.initial_weights = initial_model(
                cfg.model, self.num_classes, in_chans=3, drop_rate=cfg.drop_rate, **({} if checkpoint else dict(
                    pretrained=cfg.pretrained, pretrained_path=cfg.pretrained_path,
                    initial_checkpoint=cfg.initial_checkpoint)))
        self.architecture = getattr(model, "pretrained_cfg", {}).get("architecture") or cfg.model
        self.params = count_params(model)
        if checkpoint:
            self.initial_weights = checkpoint.get("initial_weights")
            try:
                model.load_state_dict(checkpoint["model"])
            except RuntimeError as e:
                raise UserError(f"checkpoint {resume} does not fit {cfg.model} with {self.num_classes} classes "
                                f"({str(e).splitlines()[0]}); resume with the run's own model and data") from None
        if cfg.sync_bn and self.world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
        self.ema = build_ema(cfg.ema, self.model)
        if self.ema is not None and checkpoint and checkpoint.get("ema") is not None:
            self.ema.module.load_state_dict(checkpoint["ema"])
        self.evaluated = self.ema.module if self.ema is not None else self.model

    def _build_loop(self) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        optimizer = build_optimizer(self.model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.schedule, self.steps_per_epoch, cfg.epochs, cfg.optim.freeze_epochs)
        prepared, optimizer = accelerator.prepare(self.model, optimizer)  # not the loaders: they shard themselves
        # prepare() wraps model.forward in a new autocast object per run, and torch.compile guards on that object's
        # identity, so every later run in a process recompiled (a sweep, benchmarks/time_to_accuracy.py); the loops
        # enter autocast themselves
        self.model.__dict__.pop("forward", None)
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        # dynamic=False: a new batch size (an evaluation's last batch) gets a graph of its own, as fast as the first,
        # instead of turning the batch dimension symbolic for every later call
        compiled = (functools.partial(torch.compile, dynamic=False, backend=cfg.compile_backend) if cfg.compile
                    else (lambda module: module))
        self.evaluator = TTA(compiled(self.evaluated), cfg.tta)  # the plain module: no collective in forward
        # with an EMA, the raw weights are evaluated beside it: an average that lags them shows (ema.eval_raw)
        self.raw_evaluator = TTA(compiled(self.model), cfg.tta) if self.ema is not None and cfg.ema.eval_raw else None
        self.normalize = build_normalize(self.ds.mean, self.ds.std)
        self.loop = Loop(
            accelerator, self.model, compiled(prepared), optimizer, scheduler,
            criterion=torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum"),
            augment=build_augment(cfg.augment, self.ds.mean, self.ds.std),
            generator=torch.Generator(device=self.device), seed=cfg.seed, grad_accum=cfg.grad_accum,
            channels_last=cfg.channels_last, checkpoint_every_steps=cfg.checkpoint_every_steps,
            stop_check_every=cfg.stop_check_every, ema=self.ema, ema_cfg=cfg.ema,
            total_steps=cfg.epochs * self.steps_per_epoch, after_step=hooks.step_hook())
        self.wrapped = self.loop.wrapped

    def _restore(self, checkpoint: dict) -> None:
        """Everything but the weights (already in the model and EMA): optimizer, schedule, scaler, TrainState, this
        process's generators, BatchNorm buffers and partial-epoch loss, and the metrics rows up to the checkpoint."""
        loop = self.loop
        fresh = [g["initial_lr"] for g in loop.optimizer.param_groups]  # this command's optim.lr (and group scales)
        loop.optimizer.load_state_dict(checkpoint["optimizer"])
        loop.scheduler.load_state_dict(checkpoint["scheduler"])  # its base_lrs are the saved run's
        if len(fresh) == len(loop.scheduler.base_lrs):  # an --lr / optim.lr given with --resume takes effect
            loop.scheduler.base_lrs = fresh
            for group, lr in zip(loop.optimizer.param_groups, fresh):
                group["initial_lr"] = lr
        if self.accelerator.scaler is not None and checkpoint["scaler"] is not None:
            self.accelerator.scaler.load_state_dict(checkpoint["scaler"])
        self.state.load_state_dict(checkpoint)
        self.schedule_note = self._restretch(checkpoint["config"])
        ranks = checkpoint.get("ranks") or ()
        if len(ranks) == self.world:  # each process its own; resumed on another process count: the main process's
            loss, images = restore_rank_extras(ranks[self.rank], self._per_rank_modules())
            self.state.train_loss_sum, self.state.train_images = loss, images
        else:
            set_rng_state(checkpoint["rng"])
        self.rows = [r for r in read_metrics(self.run_dir / rundir.METRICS) if r["epoch"] <= self.state.epoch]

    def _restretch(self, saved: dict) -> str | None:
        """A resume with another epochs (or steps per epoch) or peak lr than the checkpoint's: the schedule is a
        function of the run's whole length and its peak, so it now follows the new ones, from this step's value on.
        The restored optimizer holds the old schedule's lr for the next step; set the new one, and say so (None:
        nothing changed)."""
        scheduler, step, cfg = self.loop.scheduler, self.state.step, self.cfg
        groups = self.loop.optimizer.param_groups
        new = [base * f(step) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        old = groups[0]["lr"]
        if all(g["lr"] == lr for g, lr in zip(groups, new)):
            return None
        for group, lr in zip(groups, new):
            group["lr"] = lr
        scheduler._last_lr = new
        changes = []
        if saved["epochs"] != cfg.epochs or saved["batch_size"] != cfg.batch_size:
            changes.append(f"the {cfg.schedule.name} schedule now spans {cfg.epochs} epochs "
                           f"({cfg.epochs * self.steps_per_epoch} steps; it spanned {saved['epochs']} when saved)")
        if saved["optim"]["lr"] != cfg.optim.lr:
            changes.append(f"optim.lr is now {cfg.optim.lr:g} (it was {saved['optim']['lr']:g} when saved)")
        return (f"{'; '.join(changes) or 'the schedule changed'}: the learning rate goes from {old:.3g} to "
                f"{new[0]:.3g} at step {step} and follows the new schedule from there")

    def _per_rank_modules(self) -> list:
        return [self.model, self.ema.module if self.ema is not None else None]

    def _start_logging(self) -> None:
        cfg, state = self.cfg, self.state
        self.progress = Progress(self.is_main, cfg.epochs, self.steps_per_epoch, done_steps=state.step)
        self.meta = {"model": self.architecture, "num_classes": self.num_classes, "in_chans": 3, "image_size": self.image_size,
                     "classes": self.ds.classes, "mean": list(self.ds.mean), "std": list(self.ds.std),
                     "ema": cfg.ema.enabled}
        self.step_log = StepLog(lambda values, step: None, 0)
        if self.wandb_mode != "disabled":  # first: its console log then starts with the lines below
            self._start_wandb()
        self.loop.step_log = self.step_log
        if self.is_main:
            self._replace_earlier_run_and_write_config()
            where = f"resuming {self.resume} at epoch {state.epoch + 1} step {state.step}" if self.resume else "starting"
            self.progress.print(
                f"{cfg.model} ({self.params:,} params) on {self.world} x {_device_name(self.device)}, mixed precision "
                f"{self.accelerator.mixed_precision}; {self.ds.name}: {len(self.ds.train)} train / {len(self.ds.test)} "
                f"test images; global batch {cfg.batch_size}, {self.steps_per_epoch} steps per epoch; {where}; run "
                f"directory {self.run_dir}")
            if self.initial_weights and not self.resume:
                self.progress.print(f"initial weights: {self.initial_weights['source']}; {self.initial_weights['note']}")
            if self.schedule_note:
                self.progress.print(f"note: {self.schedule_note}")
            if self.wandb_hint:
                self.progress.print(self.wandb_hint)

    def _replace_earlier_run_and_write_config(self) -> None:
        """Main process, once the inputs are checked: with --overwrite the earlier run's files go (rundir.clear_run);
        config.yaml and metrics.jsonl (the rows so far) are written."""
        if self.overwrite and self.resume is None and (removed := rundir.clear_run(self.run_dir)):
            self.progress.print(f"starting over in {self.run_dir}: removed the earlier run's {', '.join(removed)}")
        write_text(self.run_dir / rundir.CONFIG,
                   rundir.CONFIG_HEADER + to_yaml(dataclasses.replace(self.cfg, output_dir=None)))
        write_metrics(self.rows, self.run_dir / rundir.METRICS)

    def _start_wandb(self) -> None:
        """The W&B run (main process; a resume continues it): the resolved config and what the run measured of itself,
        best values in the summary, a history row every wandb.log_every_steps steps; no console redraws (Progress)."""
        import wandb

        cfg, state = self.cfg, self.state
        state.wandb_id = state.wandb_id or secrets.token_hex(4)  # kept in checkpoints: a resume continues it
        names = wandb_settings(cfg.wandb, self.run_dir)
        ds = self.ds
        config = dict(to_dict(dataclasses.replace(cfg, mixed_precision=self.accelerator.mixed_precision)),
                      augment=to_dict(resolve_augment(cfg.augment)))
        config.update(params=self.params, world_size=self.world, steps_per_epoch=self.steps_per_epoch,
                      dataset={"name": ds.name, "train": len(ds.train), "test": len(ds.test),
                               "val": len(ds.val) if ds.val is not None else 0, "classes": self.num_classes,
                               "image_size": self.image_size},
                      device=_device_name(self.device), versions=_versions())
        self.accelerator.init_trackers(names.pop("project"), config=config, init_kwargs={"wandb": dict(
            names, dir=str(self.run_dir), mode=self.wandb_mode, id=state.wandb_id, resume="allow",
            settings=wandb.Settings(console="wrap"))})  # wraps sys.stdout: not the bar's copy
        if self.is_main:
            run = self.accelerator.get_tracker("wandb", unwrap=True)
            define_wandb_metrics(run, self.val_loader is not None)
        # on every process (each row's loss is all processes' mean); accelerator.log writes on the main one only
        self.step_log = StepLog(self.accelerator.log, cfg.wandb.log_every_steps, self.world)

    # ------------------------------------------------------------------------------------------ running

    def fit(self) -> dict:
        """Train the remaining epochs, evaluating, selecting the best and saving after each; returns the summary."""
        cfg, state = self.cfg, self.state
        self.check = StopCheck(self.stop_flag, self.device, self.world)
        self.result, self.raw_result, self.first_indices = None, None, None
        self.t_start, last_curves = time.perf_counter(), time.perf_counter()
        for epoch in range(state.epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            self.step_log.start_epoch()
            done = train_one_epoch(self.loop, state, epoch, self.train_loader, self.progress, self.check,
                                   save=lambda batch, loss_sum, images: self.save(epoch, batch, loss_sum, images),
                                   stop=lambda stop, saved: self.stop(stop, saved, epoch))
            if self.first_indices is None:
                self.first_indices = self.train_loader.local_indices()
            row, selected = self._end_epoch(epoch, done, t_epoch)
            if self.is_main:
                write_metrics(self.rows, self.run_dir / rundir.METRICS)
                if selected and cfg.save_best:
                    save_weights(self.evaluated.state_dict(), self.run_dir / rundir.WEIGHTS["best"],
                                 dict(self.meta, epoch=epoch + 1))
                if time.perf_counter() - last_curves > CURVES_EVERY:
                    plot_curves(self.rows, self.run_dir / rundir.CURVES, self.run_dir.name, self._schedule())
                    last_curves = time.perf_counter()
            state.epoch, state.batch, state.train_loss_sum, state.train_images = epoch + 1, 0, 0.0, 0
            every, last = cfg.checkpoint_every_epochs, epoch + 1 == cfg.epochs
            # decided alike on every process: save() is collective, and only the main process gets its path back
            saving = last or bool(every and (epoch + 1) % every == 0)
            saved = self.save(epoch + 1, 0, 0.0, 0) if saving else None
            self.step_log.flush()  # its rows come first: W&B drops a row whose step is below the last one's
            self.accelerator.log({k: v for k, v in row.items() if v is not None}, step=state.step)
            self.progress.end_epoch(row)
            if not last and (stop := self.check(state.step, done.lr, done.loss_sum, wait=True)):  # a signal during
                self.stop(stop, saved if saving else self.save(epoch + 1, 0, 0.0, 0), epoch)  # the evaluation
        self.check.close()
        self.progress.close()
        state.elapsed += time.perf_counter() - self.t_start
        return self._finish()

    def _schedule(self) -> list[tuple[float, float]]:
        """The planned lr of the run's steps (up to ~500 points), as (epoch, lr), for curves.png."""
        scheduler, total = self.loop.scheduler, self.cfg.epochs * self.steps_per_epoch
        base, factor = scheduler.base_lrs[0], scheduler.lr_lambdas[0]
        return [(s / self.steps_per_epoch, base * factor(s)) for s in range(0, total + 1, max(total // 500, 1))]

    def _evaluate(self, loader: DeviceLoader, evaluator=None) -> dict:
        return evaluate_loader(evaluator or self.evaluator, loader, self.normalize, self.num_classes, self.accelerator,
                               self.cfg.channels_last)

    def _evaluate_raw(self) -> dict | None:
        """The raw weights on the test split, when an EMA is what gets evaluated (and ema.eval_raw)."""
        if self.raw_evaluator is None:
            return None
        if self.world > 1 and not self.cfg.sync_bn:
            average_bn_stats(self.model, self.accelerator)
        return self._evaluate(self.test_loader, self.raw_evaluator)

    def _end_epoch(self, epoch: int, done: EpochResult, t_epoch: float) -> tuple[dict, bool]:
        """Evaluate when due, add the metrics row, update the best; returns (row, whether this epoch is selected)."""
        cfg, state = self.cfg, self.state
        evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        val = None
        if evaluated:
            self.progress.evaluating()
            if self.world > 1 and not cfg.sync_bn:
                average_bn_stats(self.evaluated, self.accelerator)
            self.result = self._evaluate(self.test_loader)
            self.raw_result = self._evaluate_raw()
            val = self._evaluate(self.val_loader) if self.val_loader is not None else None
        row = {"epoch": epoch + 1, "step": state.step, "train_loss": done.train_loss,
               "test_loss": self.result["loss"] if evaluated else None,
               "test_acc": self.result["acc"] if evaluated else None, "lr": done.lr,
               "epoch_seconds": time.perf_counter() - t_epoch, "images_per_second": done.images_per_second}
        if self.raw_evaluator is not None:
            raw = self.raw_result if evaluated else None
            row.update(test_loss_raw=raw and raw["loss"], test_acc_raw=raw and raw["acc"])
        if self.val_loader is not None:
            row.update(val_loss=val["loss"] if val else None, val_acc=val["acc"] if val else None)
        self.rows.append(row)
        improved = evaluated and row["test_acc"] > state.best["acc"]  # the same on every rank: the metrics are reduced
        if improved:
            state.best = {"acc": row["test_acc"], "epoch": epoch + 1}
        if self.val_loader is None:
            selected = improved
        else:  # model selection on the held-out split
            selected = val is not None and val["acc"] > state.best_val["acc"]
            if selected:
                state.best_val = {"acc": val["acc"], "epoch": epoch + 1, "test_acc": row["test_acc"]}
        if selected:
            state.best_step = state.step  # this epoch's checkpoint is kept as the best
        return row, selected

    def save(self, epoch: int, batch: int, loss_sum, images: int) -> Path | None:
        """A checkpoint after `batch` steps of epoch `epoch` (0: its start); every process takes part, the main
        process writes it and returns its path."""
        extras = rank_extras(loss_sum, images, self._per_rank_modules())
        ranks = gather_object([extras]) if self.world > 1 else [extras]
        if not self.is_main:
            return None
        loop, state = self.loop, self.state
        position = dataclasses.replace(state, epoch=epoch, batch=batch, train_loss_sum=float(loss_sum),
                                       train_images=images,
                                       elapsed=state.elapsed + time.perf_counter() - self.t_start)
        scaler = self.accelerator.scaler
        return save_checkpoint({
            "model": self.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None, "config": to_dict(self.cfg),
            "classes": list(self.ds.classes), "world_size": self.world, "rng": rng_state(), "ranks": ranks,
            "initial_weights": self.initial_weights,
            **position.state_dict(),
        }, self.run_dir / rundir.CHECKPOINTS, self.cfg.keep_checkpoints, state.best_step)

    def stop(self, stop, saved: Path | None, epoch: int) -> None:
        """End the run on every process (raises what main() turns into the exit code), once `saved` is written."""
        self.check.close()
        self.progress.close()
        if stop.diverged:
            good = list_checkpoints(self.run_dir / rundir.CHECKPOINTS)
            raise NonFiniteLoss(f"{stop.what} at step {stop.step} (epoch {epoch + 1}, lr {stop.lr:.3g}); stopped "
                                f"without saving it: {f'the last good checkpoint is {good[-1]}' if good else 'no checkpoint yet'}"
                                f"; lower optim.lr (or raise schedule.warmup_epochs), then resume with --resume")
        indices = self.first_indices if self.first_indices is not None else self.train_loader.local_indices()
        self._rank_report(indices, stopped=stop.signal_name)
        self.accelerator.wait_for_everyone()  # no process exits (a launcher then kills the rest) before the file is whole
        other = "" if self.stop_flag.signum else " on another process"
        raise Preempted(f"stopped by {stop.signal_name}{other} after step {self.state.step} (epoch {epoch + 1}); saved "
                        f"{saved}; continue with: python -m resnet_lite.train --output-dir {self.run_dir} --resume")

    def _rank_report(self, train_indices, **extra) -> None:
        hooks.rank_report(self.rank, self.world, self.state.step, self.model, train_indices, self.test_loader,
                          wrapped=self.wrapped, **extra)

    # ------------------------------------------------------------------------------------------ the end

    def _finish(self) -> dict:
        """summary.json, model_last.safetensors, curves.png and the final W&B and console output."""
        cfg, state, ds = self.cfg, self.state, self.ds
        if self.result is None:  # nothing left to train (a finished run resumed): evaluate for the summary
            self.result, self.raw_result = self._evaluate(self.test_loader), self._evaluate_raw()
        result = self.result
        summary = {
            "model": cfg.model, "run_dir": str(self.run_dir), "dataset": ds.name, "epochs": cfg.epochs,
            "steps": state.step, "best_test_acc": state.best["acc"], "best_epoch": state.best["epoch"],
            "final_test_acc": result["acc"], "final_test_loss": result["loss"],
            "per_class_acc": dict(zip(ds.classes, result["per_class"])), "params": self.params,
            "world_size": self.world, "eval_samples": result["samples"], "total_seconds": state.elapsed,
            "mixed_precision": self.accelerator.mixed_precision, "devices": gather_object([_device_name(self.device)]),
            "versions": _versions(), "ema": cfg.ema.enabled, "tta": cfg.tta, "initial_weights": self.initial_weights,
        }
        if self.raw_result is not None:
            summary.update(final_test_acc_raw=self.raw_result["acc"], final_test_loss_raw=self.raw_result["loss"])
        if self.val_loader is not None:  # model_best.safetensors is the best epoch on the held-out split
            last_val = next((r["val_acc"] for r in reversed(self.rows) if r.get("val_acc") is not None), None)
            summary.update(final_val_acc=last_val, best_val_acc=state.best_val["acc"],
                           best_val_epoch=state.best_val["epoch"], test_acc_at_best_val=state.best_val["test_acc"])
        self._rank_report(self.first_indices)
        if self.is_main:
            save_weights(self.evaluated.state_dict(), self.run_dir / rundir.WEIGHTS["last"],
                         dict(self.meta, epoch=len(self.rows)))
            write_json(summary, self.run_dir / rundir.SUMMARY)
            plot_curves(self.rows, self.run_dir / rundir.CURVES, self.run_dir.name, self._schedule())
            if self.wandb_mode != "disabled":
                self._log_wandb_final(result, summary)
            print_final(summary, ds.classes)
            if self.raw_result is not None and result["acc"] < self.raw_result["acc"] - EMA_WARN:
                self.progress.print(
                    f"warning: the weight average (EMA) ends {100 * (self.raw_result['acc'] - result['acc']):.1f} points "
                    f"below the raw weights ({100 * result['acc']:.2f}% against {100 * self.raw_result['acc']:.2f}%); "
                    f"shorten it (lower ema.decay, or ema.ramp_power=3) or turn it off (ema.enabled=false)")
        return summary

    def _log_wandb_final(self, result: dict, summary: dict) -> None:
        """Sample predictions of what the evaluation ran (EMA weights, TTA), its confusion matrix, the curves, and with
        wandb.log_model the weights."""
        images, labels = self.ds.test.images[:WANDB_SAMPLES], self.ds.test.labels[:WANDB_SAMPLES]
        x = self.normalize(images.to(self.device))
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        was_training = self.evaluated.training
        with torch.no_grad(), self.accelerator.autocast():
            self.evaluated.eval()
            probs = self.evaluator(x).float().softmax(1).cpu()
        self.evaluated.train(was_training)
        samples = [(image, label, int(p.argmax()), float(p.max())) for image, label, p in zip(images, labels.tolist(), probs)]
        run = self.accelerator.get_tracker("wandb", unwrap=True)
        log_wandb_final(run, self.run_dir / rundir.CURVES, result["confusion"], self.ds.classes, samples)
        if self.cfg.wandb.log_model:
            log_wandb_model(run, self.run_dir, {k: summary[k] for k in ("model", "best_test_acc", "best_epoch",
                                                                       "final_test_acc", "epochs", "steps")})


def _versions() -> dict:
    import accelerate
    import timm

    return {"resnet_lite": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux: the CPU's marketing name
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or device.type
