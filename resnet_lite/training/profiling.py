"""A torch.profiler trace of a few training steps (the setting profile, --profile N), what speed work starts from.

    python -m resnet_lite.train --variant fast --profile 10        # then open <run>/profile/trace-rank0.json

After a warm-up of WAIT + WARMUP optimizer steps (the first steps compile, tune cuDNN and grow the allocator's pools;
the profiler's own warm-up step is not kept), N steps are recorded on every process: CPU operators, and CUDA kernels on
a GPU. Each process then writes a Chrome trace (chrome://tracing, ui.perfetto.dev) and a table of the top operators by
self time (CPU, and CUDA where present) into <run>/profile (rundir.profile_files), and training goes on unprofiled; the
profiler records and changes nothing of the training itself. A run that ends (or stops) inside the N steps writes what
it recorded.

    profiler = StepProfiler(steps=10, run_dir=run_dir, rank=0, device=device, start_step=state.step, say=print)
    ... after each optimizer step: profiler.step()
    profiler.close()                                             # at the run's end, or when it stops
"""
from pathlib import Path

import torch
from torch.autograd.profiler_util import FunctionEventAvg
from torch.profiler import ProfilerActivity

from ..outputs import rundir

__all__ = ["StepProfiler", "WAIT", "WARMUP", "TOP_OPERATORS"]

WAIT, WARMUP = 5, 1  # optimizer steps before the recorded ones: skipped, then the profiler's warm-up
TOP_OPERATORS = 40  # rows of the table


class StepProfiler:
    """torch.profiler over the optimizer steps start_step + WAIT + WARMUP + 1 .. + steps; inert after them."""

    def __init__(self, steps: int, run_dir, rank: int, device: torch.device, start_step: int = 0, say=print):
        self.trace, self.table = rundir.profile_files(run_dir, rank)
        self.cuda, self.say, self.rank, self.steps, self.start = device.type == "cuda", say, rank, steps, start_step
        self.recorded = 0
        activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * self.cuda
        self.profiler: torch.profiler.profile | None = torch.profiler.profile(
            activities=activities, schedule=torch.profiler.schedule(wait=WAIT, warmup=WARMUP, active=steps, repeat=1),
            on_trace_ready=self._write, record_shapes=True)
        self.profiler.start()
        self.taken = 0  # steps since start_step

    def step(self) -> None:
        if self.profiler is None:
            return
        self.taken += 1
        self.profiler.step()
        if self.taken >= WAIT + WARMUP + self.steps:  # the trace is written: stop profiling
            self.close()

    def close(self) -> None:
        """Stop the profiler: a recording in progress is written; none begun says so (main process)."""
        if self.profiler is None:
            return
        profiler, self.profiler = self.profiler, None
        profiler.stop()
        if not self.recorded and self.rank == 0:
            self.say(f"profile: the run ended before a step was recorded (the first {WAIT + WARMUP} steps are a "
                     f"warm-up); train longer to get a trace")

    def _write(self, profiler) -> None:
        Path(self.trace).parent.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(self.trace))
        sort = ("self_device_time_total" if hasattr(FunctionEventAvg, "self_device_time_total") else
                "self_cuda_time_total") if self.cuda else "self_cpu_time_total"  # torch < 2.4 says cuda
        Path(self.table).write_text(profiler.key_averages().table(sort_by=sort, row_limit=TOP_OPERATORS) + "\n")
        self.recorded = max(self.taken - WAIT - WARMUP, 0)
        if self.rank == 0:
            last = self.start + self.taken
            self.say(f"profile: steps {last - self.recorded + 1}..{last} in {self.trace} (chrome://tracing or "
                     f"ui.perfetto.dev) and {self.table.name}, one of each per process")
