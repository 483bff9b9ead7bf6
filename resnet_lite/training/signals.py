"""How a run stops before its end: on a signal with a checkpoint, on a non-finite loss without one, the same step on
every process.

    with stop_signals() as flag:                      # SIGTERM, SIGINT, SIGUSR1 (Slurm's warning) set flag.signum
        check = StopCheck(flag, device, world_size)
        for ...:
            ...optimizer.step(); step += 1
            if stop := check(step, lr, loss_sum):     # None, or the same Stop on every process
                ...save (unless stop.diverged) and raise Preempted / NonFiniteLoss

The first signal only sets a flag: the step in progress finishes, the trainer saves and exits with EXIT_PREEMPTED.
The handler then restores the default action, so a second signal ends the process at once (killed by the signal:
exit status 128 + its number in a shell). Processes agree by an all-reduce (MAX) of three numbers per step, posted
without waiting and read at the next step, so the host never waits for the device on its account; a checkpoint
waits for the current step's numbers before it is written, so no checkpoint holds a non-finite state.
"""
import contextlib
import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .distributed import DeferredReduce

__all__ = ["EXIT_PREEMPTED", "EXIT_NONFINITE", "STOP_SIGNALS", "StopFlag", "Stop", "StopCheck", "Preempted",
           "NonFiniteLoss", "stop_signals", "stop_with_parent"]

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): "try again later", i.e. resume with --resume; launch/ requeues on it
EXIT_NONFINITE = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(Exception):
    """Stopped by a signal after a checkpoint was saved; the run continues with --resume."""


class NonFiniteLoss(Exception):
    """The loss (or the weights) became inf or nan; nothing was saved after the last good checkpoint."""


@dataclass
class StopFlag:
    signum: int = 0  # the first stop signal this process received; 0: none


@contextlib.contextmanager
def stop_signals(signals=STOP_SIGNALS):
    """Catch `signals` while the block runs: the first sets the flag it yields, a second one kills the process."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():  # Python sets handlers in the main thread only
        yield flag
        return

    def on_signal(signum, frame):
        flag.signum = flag.signum or signum
        for s in signals:
            signal.signal(s, signal.SIG_DFL)
        # os.write, not print: a handler that prints while the interrupted code prints raises a reentrancy error
        os.write(2, f"{signal.Signals(signum).name} received: saving a checkpoint after this step, then exiting "
                    f"(send it again to exit at once)\n".encode())

    previous = {s: signal.signal(s, on_signal) for s in signals}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Have the kernel send `signum` to this process when its parent process ends (Linux's PR_SET_PDEATHSIG); False
    where that cannot be set. `wandb agent` stops a run with SIGTERM to the process it started: the launcher, which
    dies of it and would leave the trainer running, orphaned, beside the agent's next run."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signum), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return False


@dataclass
class Stop:
    step: int  # the optimizer step whose numbers asked for the stop
    lr: float  # that step's learning rate
    signum: int  # the largest signal number any process received (0: none)
    bad_loss: int  # 0 finite, 1 inf, 2 nan (on any process)
    bad_weights: bool

    @property
    def diverged(self) -> bool:
        return bool(self.bad_loss or self.bad_weights)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def what(self) -> str:
        if self.bad_loss:
            return f"the training loss became {'nan' if self.bad_loss == 2 else 'inf'}"
        return "the weights became inf or nan"


class StopCheck:
    """Called after every optimizer step on every process, with the same `wait`: returns None, or the same Stop on
    all of them. wait=True (before a checkpoint) also covers this step and checks the weights of `model`."""

    def __init__(self, flag: StopFlag, device, world_size: int):
        self.flag, self.device, self.world_size = flag, torch.device(device), world_size
        self.pending: tuple[int, float, DeferredReduce] | None = None  # (step, lr, the flags' reduction)

    def _post(self, step: int, lr: float, loss_sum: torch.Tensor, model) -> None:
        flags = torch.zeros(3, device=self.device)
        flags[0] = self.flag.signum  # scalar fills and device ops only: nothing here waits for the device
        flags[1] = torch.isnan(loss_sum) * 2 + torch.isinf(loss_sum)
        if model is not None:
            flags[2] = ~torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
        self.pending = (step, lr, DeferredReduce(flags, self.world_size, dist.ReduceOp.MAX))

    def _read(self) -> Stop | None:
        if self.pending is None:
            return None
        step, lr, flags = self.pending
        self.pending = None
        signum, bad_loss, bad_weights = (int(v) for v in flags.read())
        return Stop(step, lr, signum, bad_loss, bool(bad_weights)) if signum or bad_loss or bad_weights else None

    def __call__(self, step: int, lr: float, loss_sum: torch.Tensor, model=None, wait: bool = False) -> Stop | None:
        earlier = self._read()  # the previous step's numbers, all processes' by now
        wait = wait or earlier is not None  # every process got the same `earlier`, so all of them wait here too
        self._post(step, lr, loss_sum, model if wait else None)
        if not wait:
            return None
        now = self._read()
        return earlier if earlier is not None and earlier.diverged else now or earlier

    def close(self) -> None:
        """Wait for the numbers still in flight (every process posted them), before other collectives or exit."""
        self._read()
