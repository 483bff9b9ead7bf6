"""Setting up one or many processes: the Accelerator, the precision, DDP's options, and what processes agree on.

    with accelerator_session(mixed_precision=resolve_mixed_precision("auto"),
                             kwargs_handlers=[DDPConfig().kwargs_handler()]):
        agree(accelerator, error)                  # every process raises the UserError one of them met, or none does
        ds = main_process_first(accelerator, lambda: load_data(cfg))   # one download; a failure stops every process
        ...
        average_bn_stats(model, accelerator)       # before evaluating or saving a model trained on several processes
    pending = DeferredReduce(numbers, world_size)  # a step later: pending.read(), summed over processes

A user's mistake under a launcher must stop every process alike: a process that raises while its peers wait for it in
a collective leaves them a broken connection (gloo: "Connection closed by peer") and a traceback each. What only some
processes can meet (a corrupt image, a failed download) therefore goes through `agree`, and every process raises the
same UserError at the same point.
"""
import contextlib
import dataclasses
import os
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedDataParallelKwargs

from ..errors import UserError

__all__ = ["DDPConfig", "resolve_mixed_precision", "accelerator_session", "agree", "main_process_first",
           "average_bn_stats", "DeferredReduce"]


@dataclass
class DDPConfig:
    bucket_cap_mb: float = field(default=4.0, metadata={
        "help": "MiB of gradients per all-reduce bucket (torch's default 25): lite_r4b2's 11 MB of fp32 gradients "
                "then make several buckets, whose all-reduce overlaps the rest of the backward pass"})
    static_graph: bool = field(default=True, metadata={
        "help": "every step uses the same parameters (true for these models; false if some get no gradient): DDP "
                "skips its search for unused ones and orders its buckets once. Not with grad_accum > 1 (torch's "
                "static graph cannot begin under no_sync), where it is off"})
    broadcast_buffers: bool = field(default=False, metadata={
        "help": "broadcast rank 0's BatchNorm statistics before every forward (torch's default); off: each process "
                "keeps its own and the trainer averages them before each evaluation and checkpoint of the model"})
    gradient_as_bucket_view: bool = field(default=True, metadata={
        "help": "gradients live in the all-reduce buckets: one copy and one gradient's worth of memory less"})

    def __post_init__(self):
        if self.bucket_cap_mb <= 0:
            raise UserError(f"ddp.bucket_cap_mb={self.bucket_cap_mb} must be > 0")

    def kwargs_handler(self, grad_accum: int = 1) -> DistributedDataParallelKwargs:
        settings = dataclasses.asdict(self)
        settings["static_graph"] = self.static_graph and grad_accum == 1
        return DistributedDataParallelKwargs(**settings)


def resolve_mixed_precision(setting: str) -> str:
    """'auto': fp16/bf16 when the launcher asks for one (accelerate launch --mixed_precision, or its config file),
    else bf16 on a CUDA GPU that has it, else no. (`accelerate launch` without a config says "no" by default.)"""
    if setting != "auto":
        return setting
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    if launcher in ("fp16", "bf16"):
        return launcher
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return "bf16" if not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


@contextlib.contextmanager
def accelerator_session(**kwargs):
    """An Accelerator for one run or evaluation; afterwards Accelerate's process-wide state is reset, so a later
    session in this process (a sweep, a benchmark's next seed) can use another precision."""
    accelerator = Accelerator(**kwargs)
    try:
        yield accelerator
    finally:
        accelerator.end_training()
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def agree(accelerator: Accelerator, error: str | None) -> None:
    """Raise on every process the UserError that any of them met (`error`: this process's message, None if it met
    none): the main process's message, else the lowest other rank's, naming it. A collective, so every process calls it
    at the same point; with one process it raises `error` alone."""
    errors = [error]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        errors = gather_object([error])
    rank, message = next(((r, e) for r, e in enumerate(errors) if e), (None, None))
    if message:
        raise UserError(message if rank == 0 else f"{message} (on process {rank})")


def main_process_first(accelerator: Accelerator, work):
    """work() on the main process, then on the others (one download, which the others then read, as Accelerate's
    main_process_first), returning its result; a UserError on any process is raised on every process (agree), so none
    is left waiting for one that stopped."""

    def attempt():
        try:
            return work(), None
        except UserError as e:
            return None, str(e)

    result, error = attempt() if accelerator.is_main_process else (None, None)
    agree(accelerator, error)
    result, error = (result, None) if accelerator.is_main_process else attempt()
    agree(accelerator, error)
    return result


def average_bn_stats(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Average BatchNorm running statistics over processes (timm's distribute_bn 'reduce'), so every process
    evaluates, and saves, the same model."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            assert m.running_mean is not None and m.running_var is not None  # kept with track_running_stats
            m.running_mean.copy_(accelerator.reduce(m.running_mean, "mean"))
            m.running_var.copy_(accelerator.reduce(m.running_var, "mean"))


class DeferredReduce:
    """A few numbers on the device, all-reduced over `world_size` processes (`op`) and copied to the host without the
    host waiting for either: read() waits, typically a step later, when both are long done. Every process must create
    one at the same point (the all-reduce is collective). StopCheck and StepLog read their numbers this way."""

    def __init__(self, values: torch.Tensor, world_size: int, op=None):
        import torch.distributed as dist

        work = dist.all_reduce(values, op=op or dist.ReduceOp.SUM, async_op=True) if world_size > 1 else None
        event = None
        if values.is_cuda:
            if work is not None:
                work.wait()  # NCCL: the stream waits for the reduction, the host does not
                work = None
            values = values.to("cpu", non_blocking=True)  # into pinned memory, behind the kernels already queued
            event = torch.cuda.Event()
            event.record()
        self.values, self.work, self.event = values, work, event

    def read(self) -> list[float]:
        if self.work is not None:
            self.work.wait()
        if self.event is not None:
            self.event.synchronize()
        return self.values.tolist()
