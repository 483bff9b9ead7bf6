"""The Trainer: one run, built in named steps, then fit() (the epochs) and the end of the run.

    with stop_signals() as flag, accelerator_session(...) as accelerator, rundir.claimed(...) as run_dir:
        summary = Trainer(cfg, accelerator, run_dir, resume="runs/x/checkpoints/step-00000120.pt", stop_flag=flag).fit()

Building: check how the processes were started -> data -> model (and its weights) -> optimizer and schedule -> the
rest of a checkpoint (Checkpointer) -> the report (Reporter: console, W&B, the run's files) -> the loop. The network has
one name per role: `model` the plain network being trained, `wrapped` what the training steps call (model behind DDP
and/or torch.compile), `evaluated` the module whose weights are evaluated and saved (the EMA's when enabled, else
model), `evaluator` the callable an evaluation runs (evaluated, compiled, behind test-time augmentation).
"""
import dataclasses
import functools
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from .. import hooks
from ..config import TrainConfig
from ..data.augment import build_augment, resolve
from ..data.images import build_normalize
from ..data.loader import DeviceLoader
from ..data.mix import build_mix, soft_target_loss
from ..data.sources import check_data, load_data
from ..errors import UserError, first_line
from ..models.lite import create_model
from ..models.pretrained import initial_model, pretrained_source, resolve_weights_file
from ..models.tools import count_params
from ..models.tta import TTA
from ..outputs import rundir
from ..outputs.checkpoint import load_checkpoint
from ..outputs.files import read_metrics
from ..outputs.reporter import Reporter
from ..outputs.trackers import require_installed
from .checkpointing import Checkpointer
from .distributed import average_bn_stats, main_process_first
from .ema import build_ema, update_ema
from .engine import DIVERGED, STOPPED, EpochResult, Loop, evaluate_loader, train_one_epoch
from .optim import build_optimizer, build_scheduler, warmup_note
from .profiling import StepProfiler
from .signals import NonFiniteLoss, Preempted, StopCheck, StopFlag
from .state import TrainState

__all__ = ["Trainer"]

WANDB_SAMPLES = 32  # test images in the W&B table of sample predictions


class Trainer:
    """Train as `cfg` says on `accelerator`, in the claimed folder `run_dir`, continuing from the checkpoint file
    `resume` when given; `overwrite`: the folder's earlier run is replaced once the inputs are checked.

    fit() returns the summary; it raises Preempted after a stop signal (a checkpoint was saved: resume it) and
    NonFiniteLoss (nothing was saved after the last good checkpoint); both end every process at the same step."""

    # configuration: cfg, run_dir, resume, overwrite; processes: accelerator, rank, world, device, is_main, stop_flag
    # data: ds, train_loader, test_loader, val_loader, steps_per_epoch, num_classes, image_size, normalize
    # network: model, ema, evaluated, evaluator, raw_evaluator, wrapped, params, initial_weights
    # the run: optimizer, scheduler, state, rows, checkpointer (saving, restoring), reporter (console, trackers, files),
    #          profiler (--profile), loop (what every step uses), check (stop signals, non-finite losses)

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, run_dir, resume=None,
                 stop_flag: StopFlag | None = None, overwrite: bool = False):
        self.accelerator, self.resume, self.overwrite = accelerator, resume, overwrite
        self.stop_flag = stop_flag or StopFlag()
        self.rank, self.world, self.device = accelerator.process_index, accelerator.num_processes, accelerator.device
        self.is_main = accelerator.is_main_process
        checkpoint = load_checkpoint(resume) if resume else None
        self.run_dir = Path(run_dir)
        if cfg.initial_checkpoint and not checkpoint:  # config.yaml names the very file (a run's weights)
            cfg = dataclasses.replace(cfg, initial_checkpoint=str(resolve_weights_file(cfg.initial_checkpoint)))
        self.cfg = cfg = dataclasses.replace(cfg, output_dir=str(self.run_dir))
        check_processes(cfg, accelerator)
        set_seed(cfg.seed)
        self._load_data()
        self._build_model(checkpoint)
        self._build_optimizer()
        self.state = TrainState()
        notes = [warmup_note(cfg.schedule, self.steps_per_epoch, cfg.epochs)]
        self.checkpointer = Checkpointer(
            cfg, self.run_dir, accelerator, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
            ema=self.ema, state=self.state, classes=self.ds.classes, initial_weights=self.initial_weights,
            steps_per_epoch=self.steps_per_epoch, meta=self._weights_metadata())
        if checkpoint:
            notes.append(self.checkpointer.restore(checkpoint))
        self.rows = [r for r in read_metrics(self.run_dir / rundir.METRICS) if r["epoch"] <= self.state.epoch] \
            if checkpoint else []
        self._start_report([n for n in notes if n])
        self._build_loop()

    # ------------------------------------------------------------------------------------------ building

    def _load_data(self) -> None:
        cfg, rank, world, device = self.cfg, self.rank, self.world, self.device
        self.ds = ds = main_process_first(self.accelerator, lambda: load_data(cfg.data))  # one download
        self.num_classes, self.image_size = len(ds.classes), ds.train.images.shape[-1]
        self.train_loader = DeviceLoader(ds.train, cfg.batch_size, device=device, train=True, rank=rank,
                                         world_size=world, seed=cfg.seed, drop_last=cfg.drop_last)
        evaluation = dict(device=device, train=False, rank=rank, world_size=world)
        self.test_loader = DeviceLoader(ds.test, cfg.eval_batch_size, **evaluation)
        self.val_loader = None if ds.val is None else DeviceLoader(ds.val, cfg.eval_batch_size, **evaluation)
        self.normalize = build_normalize(ds.mean, ds.std)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise UserError(f"{len(ds.train)} training images make no batch of {cfg.batch_size}; lower --batch-size")

    def _build_model(self, checkpoint: dict | None) -> None:
        cfg, resume = self.cfg, self.resume
        if checkpoint and checkpoint.get("classes", self.ds.classes) != self.ds.classes:
            raise UserError(f"checkpoint {resume} was trained on {len(checkpoint['classes'])} classes, the data "
                            f"{cfg.data.spec} has {self.num_classes} ({', '.join(self.ds.classes[:5])}...); resume "
                            f"with the run's own data, or start a new run in another --output-dir")
        # one download of pretrained weights, which the others then read; a resumed run restores its own weights: the
        # starting ones are neither downloaded nor loaded again
        start: dict[str, Any] = {} if checkpoint else dict(
            pretrained=cfg.pretrained, pretrained_path=cfg.pretrained_path, initial_checkpoint=cfg.initial_checkpoint)
        model, self.initial_weights = main_process_first(self.accelerator, lambda: initial_model(
            cfg.model, self.num_classes, in_chans=3, drop_rate=cfg.drop_rate, **start))
        self.architecture = getattr(model, "pretrained_cfg", {}).get("architecture") or cfg.model
        self.params = count_params(model)
        if checkpoint:
            self.initial_weights = checkpoint.get("initial_weights")
            try:
                model.load_state_dict(checkpoint["model"])
            except RuntimeError as e:
                raise UserError(f"checkpoint {resume} does not fit {cfg.model} with {self.num_classes} classes "
                                f"({first_line(e)}); resume with the run's own model and data") from None
        if cfg.sync_bn and self.world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device,
                              memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
        self.ema = build_ema(cfg.ema, self.model)
        if self.ema is not None and checkpoint and checkpoint.get("ema") is not None:
            self.ema.module.load_state_dict(checkpoint["ema"])
        self.evaluated = self.ema.module if self.ema is not None else self.model

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(optimizer, cfg.schedule, self.steps_per_epoch, cfg.epochs,
                                         cfg.optim.freeze_epochs)
        with warnings.catch_warnings():
            # torch 2.10+ renames DDP's broadcast_buffers to forward_sync_buffers, which Accelerate cannot pass yet; the
            # new one would also sync the buffers when DDP wraps the model, which broadcast_buffers=False does not
            warnings.filterwarnings("ignore", r"`broadcast_buffers` is deprecated", FutureWarning)
            self.prepared, self.optimizer = self.accelerator.prepare(self.model, optimizer)  # loaders shard themselves
        # prepare() wraps model.forward in a new autocast object per run, and torch.compile guards on that object's
        # identity, so every later run in a process recompiled (a sweep, benchmarks/time_to_accuracy.py); the loops
        # enter autocast themselves
        self.model.__dict__.pop("forward", None)

    def _weights_metadata(self) -> dict:
        """What a weights file says of itself: enough for evaluate, predict and export to rebuild the model."""
        ds = self.ds
        return {"model": self.architecture, "num_classes": self.num_classes, "in_chans": 3,
                "image_size": self.image_size, "classes": ds.classes, "mean": list(ds.mean), "std": list(ds.std),
                "ema": self.cfg.ema.enabled}

    def _start_report(self, notes: list[str]) -> None:
        self.reporter = Reporter(self.cfg, self.run_dir, self.accelerator, steps_per_epoch=self.steps_per_epoch,
                                 state=self.state)
        self.reporter.start(self.ds, self.rows, params=self.params, resume=self.resume, notes=notes,
                            initial_weights=self.initial_weights,
                            replace_earlier=self.overwrite and self.resume is None)

    def _build_loop(self) -> None:
        cfg = self.cfg
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        # dynamic=False: a new batch size (an evaluation's last batch) gets a graph of its own, as fast as the first,
        # instead of turning the batch dimension symbolic for every later call
        # torch.compile of a Module returns a Module (OptimizedModule), though it is annotated as a Callable
        compiled = cast(Callable[[torch.nn.Module], torch.nn.Module],
                        functools.partial(torch.compile, dynamic=False, backend=cfg.compile_backend) if cfg.compile
                        else (lambda module: module))
        if cfg.compile and self.device.type == "cpu":
            quiet_cuda_home()
        self.evaluator = TTA(compiled(self.evaluated), cfg.tta)  # the plain module: no collective in forward
        # with an EMA, the raw weights are evaluated beside it: an average that lags them shows (ema.eval_raw)
        self.raw_evaluator = TTA(compiled(self.model), cfg.tta) if self.ema is not None and cfg.ema.eval_raw else None
        total = cfg.epochs * self.steps_per_epoch
        # with MixUp/CutMix the targets are soft, label smoothing folded into them (timm's Mixup and
        # SoftTargetCrossEntropy); without, the hard labels' loss
        mix = build_mix(resolve(cfg.augment), self.num_classes, cfg.label_smoothing)
        criterion = soft_target_loss if mix else torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing,
                                                                           reduction="sum")
        self.wrapped = compiled(self.prepared)
        self.profiler = StepProfiler(cfg.profile, self.run_dir, self.rank, self.device, start_step=self.state.step,
                                     say=self.reporter.progress.print) if cfg.profile else None
        self.loop = Loop(
            accelerator=self.accelerator, model=self.model, wrapped=self.wrapped, optimizer=self.optimizer,
            scheduler=self.scheduler, augment=build_augment(cfg.augment, self.ds.mean, self.ds.std), mix=mix,
            criterion=criterion,
            generator=torch.Generator(device=self.device), seed=cfg.seed, grad_accum=cfg.grad_accum,
            channels_last=cfg.channels_last, checkpoint_every_steps=cfg.checkpoint_every_steps,
            stop_check_every=cfg.stop_check_every, step_log=self.reporter.step_log, after_step=hooks.step_hook(),
            profile_step=self.profiler.step if self.profiler else None,
            ema_update=None if self.ema is None else functools.partial(update_ema, self.ema, self.model, cfg.ema,
                                                                       total=total))

    # ------------------------------------------------------------------------------------------ running

    def fit(self) -> dict:
        """Train the remaining epochs, evaluating, selecting the best and saving after each; returns the summary."""
        cfg, state = self.cfg, self.state
        self.check = StopCheck(self.stop_flag, self.device, self.world)
        self.result: dict | None = None  # the last test evaluation, and the raw weights' beside an EMA
        self.raw_result: dict | None = None
        self.first_indices = None
        self.t_start = time.perf_counter()
        for epoch in range(state.epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            self.reporter.step_log.start_epoch()
            done = train_one_epoch(self.loop, state, epoch, self.train_loader, self.reporter.progress, self.check,
                                   save=functools.partial(self._save, epoch))
            if done.outcome == DIVERGED:
                self._end_run(done.stop, None, epoch)
            if done.outcome == STOPPED:  # a checkpoint at this very step, unless one was due there anyway
                saved = done.saved if done.checkpointed else self._save(epoch, done.batch, done.loss_sum, done.images)
                self._end_run(done.stop, saved, epoch)
            if self.first_indices is None:
                self.first_indices = self.train_loader.local_indices()
            row, selected = self._end_epoch(epoch, done, t_epoch)
            if self.is_main and selected and cfg.save_best:
                self.checkpointer.save_weights("best", self.evaluated, epoch + 1)
            self.reporter.record_epoch(self.rows, self._schedule)
            state.epoch, state.batch, state.train_loss_sum, state.train_images = epoch + 1, 0, 0.0, 0
            # decided alike on every process: saving is collective, and only the main process gets its path back
            saving = self.checkpointer.due_after_epoch(epoch + 1)
            saved = self._save(epoch + 1, 0, 0.0, 0) if saving else None
            self.reporter.log_epoch(row, state.step)
            if epoch + 1 < cfg.epochs and (stop := self.check(state.step, done.lr, done.loss_sum, wait=True)):
                self._end_run(stop, saved if saving else self._save(epoch + 1, 0, 0.0, 0), epoch)  # a signal during
        self.check.close()  # the evaluation, or in the epoch's last step
        self._close_profiler()
        self.reporter.close()
        state.elapsed += time.perf_counter() - self.t_start
        return self._finish()

    def _save(self, epoch: int, batch: int, loss_sum, images: int) -> Path | None:
        elapsed = self.state.elapsed + time.perf_counter() - self.t_start
        return self.checkpointer.save(epoch, batch, loss_sum, images, elapsed)

    def _schedule(self) -> list[tuple[float, float]]:
        """The planned lr of the run's steps (up to ~500 points), as (epoch, lr), for curves.png."""
        total = self.cfg.epochs * self.steps_per_epoch
        base, factor = self.scheduler.base_lrs[0], self.scheduler.lr_lambdas[0]
        return [(s / self.steps_per_epoch, base * factor(s)) for s in range(0, total + 1, max(total // 500, 1))]

    def _evaluate(self, loader: DeviceLoader, evaluator=None) -> dict:
        return evaluate_loader(evaluator or self.evaluator, loader, self.normalize, self.num_classes, self.accelerator,
                               self.cfg.channels_last)

    def _evaluate_test(self) -> None:
        """The evaluated weights on the test split, and the raw ones beside an EMA (ema.eval_raw)."""
        if self.world > 1 and not self.cfg.sync_bn:
            average_bn_stats(self.evaluated, self.accelerator)
            if self.raw_evaluator is not None:
                average_bn_stats(self.model, self.accelerator)
        self.result = self._evaluate(self.test_loader)
        self.raw_result = self._evaluate(self.test_loader, self.raw_evaluator) if self.raw_evaluator else None

    def _end_epoch(self, epoch: int, done: EpochResult, t_epoch: float) -> tuple[dict, bool]:
        """Evaluate when due, add the metrics row, update the best; returns (row, whether this epoch is selected)."""
        cfg, state = self.cfg, self.state
        evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        val = None
        if evaluated:
            self.reporter.progress.evaluating()
            self._evaluate_test()
            val = self._evaluate(self.val_loader) if self.val_loader is not None else None
        test: dict | None
        raw: dict | None
        test, raw = (self.result, self.raw_result) if evaluated else ({}, {})
        assert test is not None  # an evaluated epoch's _evaluate_test() has just set self.result
        row = {"epoch": epoch + 1, "step": state.step, "train_loss": done.train_loss, "test_loss": test.get("loss"),
               "test_acc": test.get("acc"), "lr": done.lr, "epoch_seconds": time.perf_counter() - t_epoch,
               "images_per_second": done.images_per_second}
        if self.raw_evaluator is not None:
            row.update(test_loss_raw=(raw or {}).get("loss"), test_acc_raw=(raw or {}).get("acc"))
        if self.val_loader is not None:
            row.update(val_loss=val["loss"] if val else None, val_acc=val["acc"] if val else None)
        self.rows.append(row)
        improved = evaluated and row["test_acc"] > state.best["acc"]  # the same on every rank: the metrics are reduced
        if improved:
            state.best = {"acc": row["test_acc"], "epoch": epoch + 1}
        selected = improved  # model selection on the held-out split when there is one
        if self.val_loader is not None:
            selected = val is not None and val["acc"] > state.best_val["acc"]
            if val is not None and selected:
                state.best_val = {"acc": val["acc"], "epoch": epoch + 1, "test_acc": row["test_acc"]}
        if selected:
            state.best_step = state.step  # this epoch's checkpoint is kept as the best
        return row, selected

    def _end_run(self, stop, saved: Path | None, epoch: int) -> None:
        """End the run on every process (raises what main() turns into the exit code), once `saved` is written."""
        self.check.close()
        self._close_profiler()
        self.reporter.close()
        if stop.diverged:
            good = self.checkpointer.last_good()
            where = f"the last good checkpoint is {good}" if good else "no checkpoint yet"
            raise NonFiniteLoss(f"{stop.what} at step {stop.step} (epoch {epoch + 1}, lr {stop.lr:.3g}); stopped "
                                f"without saving it: {where}"
                                f"; lower optim.lr (or raise schedule.warmup_epochs), then resume with --resume")
        self.reporter.mark_preempting(stop.signum)
        indices = self.first_indices if self.first_indices is not None else self.train_loader.local_indices()
        self._rank_report(indices, stopped=stop.signal_name)
        # no process exits (a launcher then kills the rest) before the file is whole
        self.accelerator.wait_for_everyone()
        other = "" if self.stop_flag.signum else " on another process"
        raise Preempted(f"stopped by {stop.signal_name}{other} after step {self.state.step} (epoch {epoch + 1}); saved "
                        f"{saved}; continue with: python -m resnet_lite.train --output-dir {self.run_dir} --resume")

    def _close_profiler(self) -> None:
        if self.profiler is not None:
            self.profiler.close()

    def _rank_report(self, train_indices, **extra) -> None:
        hooks.rank_report(self.rank, self.world, self.state.step, self.model, train_indices, self.test_loader,
                          wrapped=self.wrapped, **extra)

    def _finish(self) -> dict:
        """model_last.safetensors, then the summary and the reporter's end of the run."""
        if self.result is None:  # nothing left to train (a finished run resumed): evaluate for the summary
            self._evaluate_test()
        assert self.result is not None  # _evaluate_test() sets it
        summary = self.reporter.summary(self.ds, self.rows, self.result, self.raw_result, params=self.params,
                                        initial_weights=self.initial_weights)
        self._rank_report(self.first_indices)
        if self.is_main:
            self.checkpointer.save_weights("last", self.evaluated, len(self.rows))
        self.reporter.finish(summary, self.rows, self._schedule, self.result, functools.partial(
            sample_predictions, self.evaluator, self.evaluated, self.normalize, self.ds.test, self.accelerator,
            self.cfg.channels_last))
        return summary


def sample_predictions(evaluator, evaluated, normalize, split, accelerator, channels_last: bool) -> list[tuple]:
    """(image, true, predicted, confidence) of the first test images, by what the evaluation runs (EMA, TTA)."""
    images, labels = split.images[:WANDB_SAMPLES], split.labels[:WANDB_SAMPLES]
    x = normalize(images.to(accelerator.device))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = evaluated.training
    with torch.no_grad(), accelerator.autocast():
        evaluated.eval()
        probs = evaluator(x).float().softmax(1).cpu()
    evaluated.train(was_training)
    return [(image, label, int(p.argmax()), float(p.max()))
            for image, label, p in zip(images, labels.tolist(), probs, strict=True)]


class _NoCudaRuntimeNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_cuda_home() -> None:
    """Drop torch's "No CUDA runtime is found, using CUDA_HOME=..." warning: inductor's CPU code generation imports
    torch.utils.cpp_extension, which says so on any machine with a CUDA toolkit and no GPU; a CPU run needs neither."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeNote) for f in logger.filters):
        logger.addFilter(_NoCudaRuntimeNote())


def check_inputs(cfg: TrainConfig, checkpoint: dict | None, resume) -> None:
    """The mistakes that show before any image is read or any process waits for another: an unknown model, the data
    (check_data), weights that cannot be found, a checkpoint of another run."""
    with torch.device("meta"):  # an unknown model fails now, not after a download
        create_model(cfg.model)
    check_data(cfg.data)
    require_installed(cfg.log_with)
    if cfg.pretrained and not checkpoint:
        pretrained_source(cfg.model, cfg.pretrained_path)  # models without weights, a missing file
    if cfg.initial_checkpoint and not checkpoint:
        resolve_weights_file(cfg.initial_checkpoint)
    if checkpoint and checkpoint["config"]["model"] != cfg.model:
        raise UserError(f"checkpoint {resume} is of {checkpoint['config']['model']}, not {cfg.model}; resume with "
                        f"the run's own model, or start a new run in another --output-dir")
    if checkpoint and checkpoint["batch"] and checkpoint["config"]["batch_size"] != cfg.batch_size:
        raise UserError(f"checkpoint {resume} stopped mid-epoch at batch_size={checkpoint['config']['batch_size']}; "
                        f"resume with that batch size (an epoch boundary checkpoint may change it)")


def check_processes(cfg: TrainConfig, accelerator: Accelerator) -> None:
    """The mistakes in how the processes were started: a launcher Accelerate cannot see, settings this machine cannot
    run. The same on every process: no process waits for another before them."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:  # every process would train the whole set alone, in one folder
        raise UserError(f"the launcher started {launched} processes (WORLD_SIZE) but Accelerate sees one; launch "
                        f"with `accelerate launch --multi_gpu` (GPUs) or `--config_file launch/cpu.yaml` (CPU), or "
                        f"torchrun")
    if cfg.sync_bn and accelerator.num_processes > 1 and accelerator.device.type == "cpu":
        raise UserError("sync_bn=true needs GPUs (torch's SyncBatchNorm has no CPU kernel); set sync_bn=false")
