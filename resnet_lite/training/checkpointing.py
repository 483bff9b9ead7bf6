"""A run's checkpoints and weights files, after torchtitan's CheckpointManager and timm's CheckpointSaver: what a
checkpoint holds (resnet_lite.training.state), when one is due, where it goes, which are kept, and how a run is put
back from one; model_best and model_last.

    checkpointer = Checkpointer(cfg, run_dir, accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                                ema=ema, state=state, classes=classes, initial_weights=origin, meta=meta,
                                steps_per_epoch=48)
    note = checkpointer.restore(checkpoint)                 # everything but the weights; a note when the schedule moved
    if checkpointer.due_after_epoch(epoch + 1):
        checkpointer.save(epoch + 1, 0, 0.0, 0, elapsed)    # every process takes part; the main one writes
    checkpointer.save_weights("best", module, epoch)         # model_best.safetensors (main process)

Checkpoints are plain dicts of tensors and plain data (torch.load(weights_only=True) reads them back), written whole or
not at all; the folder keeps the newest keep_checkpoints and the selected epoch's (resnet_lite.outputs.checkpoint).
"""
import dataclasses
from pathlib import Path

from accelerate.utils import gather_object

from ..config import TrainConfig, to_dict
from ..outputs import rundir
from ..outputs.checkpoint import list_checkpoints, save_checkpoint
from ..outputs.weights import save_weights
from .state import TrainState, rank_extras, restore_rank_extras, rng_state, set_rng_state

__all__ = ["Checkpointer"]


class Checkpointer:
    """Saves, prunes and restores the checkpoints of one run in `run_dir`/checkpoints, and writes its weights files."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, accelerator, *, model, optimizer, scheduler, ema,
                 state: TrainState, classes, initial_weights, meta: dict, steps_per_epoch: int):
        self.cfg, self.run_dir, self.accelerator = cfg, Path(run_dir), accelerator
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.state, self.ema, self.classes = state, ema, list(classes)
        self.initial_weights, self.meta, self.steps_per_epoch = initial_weights, meta, steps_per_epoch
        self.directory = self.run_dir / rundir.CHECKPOINTS
        self.world = accelerator.num_processes

    # ------------------------------------------------------------------------------------------ when

    def due_after_epoch(self, epochs_done: int) -> bool:
        """Whether the epoch boundary after `epochs_done` epochs gets a checkpoint: every checkpoint_every_epochs, and
        the run's last. The same answer on every process (saving is collective)."""
        every = self.cfg.checkpoint_every_epochs
        return epochs_done == self.cfg.epochs or bool(every and epochs_done % every == 0)

    def last_good(self) -> Path | None:
        found = list_checkpoints(self.directory)
        return found[-1] if found else None

    # ------------------------------------------------------------------------------------------ saving

    def _modules(self) -> list:
        """The modules whose buffers differ between processes within an epoch: the model and the EMA's."""
        return [self.model, self.ema.module if self.ema is not None else None]

    def save(self, epoch: int, batch: int, loss_sum, images: int, elapsed: float) -> Path | None:
        """A checkpoint after `batch` steps of epoch `epoch` (0: its start), `elapsed` seconds trained; every process
        takes part (its own extras are gathered), the main process writes it and returns its path."""
        extras = rank_extras(loss_sum, images, self._modules())
        ranks = gather_object([extras]) if self.world > 1 else [extras]
        if not self.accelerator.is_main_process:
            return None
        state, scaler = self.state, self.accelerator.scaler
        position = dataclasses.replace(state, epoch=epoch, batch=batch, train_loss_sum=float(loss_sum),
                                       train_images=images, elapsed=elapsed)
        return save_checkpoint({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None, "config": to_dict(self.cfg),
            "classes": self.classes, "world_size": self.world, "rng": rng_state(), "ranks": ranks,
            "initial_weights": self.initial_weights,
            **position.state_dict(),
        }, self.directory, self.cfg.keep_checkpoints, state.best_step)

    def save_weights(self, which: str, module, epoch: int) -> Path:
        """model_<which>.safetensors (best, last) of `module` with the run's metadata; the main process calls it."""
        return save_weights(module.state_dict(), self.run_dir / rundir.WEIGHTS[which], dict(self.meta, epoch=epoch))

    # ------------------------------------------------------------------------------------------ restoring

    def restore(self, checkpoint: dict) -> str | None:
        """Everything but the weights (already in the model and EMA): optimizer, schedule, scaler, TrainState, this
        process's generators, BatchNorm buffers and partial-epoch loss. Returns a note when the schedule changed."""
        optimizer, scheduler, state = self.optimizer, self.scheduler, self.state
        fresh = [g["initial_lr"] for g in optimizer.param_groups]  # this command's optim.lr (and group scales)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])  # its base_lrs are the saved run's
        if len(fresh) == len(scheduler.base_lrs):  # an --lr / optim.lr given with --resume takes effect
            scheduler.base_lrs = fresh
            for group, lr in zip(optimizer.param_groups, fresh, strict=True):
                group["initial_lr"] = lr
        if self.accelerator.scaler is not None and checkpoint["scaler"] is not None:
            self.accelerator.scaler.load_state_dict(checkpoint["scaler"])
        state.load_state_dict(checkpoint)
        note = self._restretch(checkpoint["config"])
        ranks = checkpoint.get("ranks") or ()
        if len(ranks) == self.world:  # each process its own; resumed on another process count: the main process's
            loss, images = restore_rank_extras(ranks[self.accelerator.process_index], self._modules())
            state.train_loss_sum, state.train_images = loss, images
        else:
            set_rng_state(checkpoint["rng"])
        return note

    def _restretch(self, saved: dict) -> str | None:
        """A resume with another epochs (or steps per epoch) or peak lr than the checkpoint's: the schedule is a
        function of the run's whole length and its peak, so it now follows the new ones, from this step's value on.
        The restored optimizer holds the old schedule's lr for the next step; set the new one, and say so (None:
        nothing changed)."""
        scheduler, step, cfg = self.scheduler, self.state.step, self.cfg
        groups = self.optimizer.param_groups
        new = [base * f(step) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
        old = groups[0]["lr"]
        if all(g["lr"] == lr for g, lr in zip(groups, new, strict=True)):
            return None
        for group, lr in zip(groups, new, strict=True):
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
