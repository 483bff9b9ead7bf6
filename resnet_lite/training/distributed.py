"""Setting up one or many processes: the Accelerator, the precision, DDP's options, and what processes agree on.

    with accelerator_session(mixed_precision=resolve_mixed_precision("auto"), kwargs_handlers=[DDPConfig().kwargs_handler()]):
        ...
        average_bn_stats(model, accelerator)       # before evaluating or saving a model trained on several processes
    pending = DeferredReduce(numbers, world_size)  # a step later: pending.read(), summed over processes
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

__all__ = ["DDPConfig", "resolve_mixed_precision", "accelerator_session", "average_bn_stats", "DeferredReduce"]


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


def average_bn_stats(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Average BatchNorm running statistics over processes (timm's distribute_bn 'reduce'), so every process
    evaluates, and saves, the same model."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
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
