"""Training images/s per variant: fp32 eager, then bf16 autocast, + channels_last, + torch.compile, each as a ratio
to fp32 eager measured in the same run.

    python benchmarks/throughput.py                                # a GPU: batch 1024, the three seed variants
    python benchmarks/throughput.py --variants lite_r4b2 --json out.json
    python benchmarks/throughput.py --quick --no-compile           # CPU smoke run, one to two minutes on 2 cores

One step is what the trainer does per batch: forward, label-smoothed cross-entropy (mean), backward, SGD with
Nesterov momentum (fused on CUDA) and zero_grad, on one fixed batch of random pixels. Column `step` times that on a
batch normalised once; column `+aug` adds the on-device `fast` augmentation (flip, reflect-pad-2 translate) of a
uint8 batch inside every step, as the trainer runs it. Compile wraps the model only, as the trainer does.
Each cell is the median over `--repeats` rounds of `--steps` steps, after `--warmup` steps; a round times every
setting of a variant in turn, so load that comes and goes hits them alike. CUDA work is synchronised before each
clock read. TFLOP/s counts 3 x forward MACs x 2 (forward + backward as twice the forward).
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from _machine import hardware  # benchmarks/ is on sys.path when a script runs
from resnet_lite import count_macs, create_model
from resnet_lite.augment import build_augment, build_normalize
from resnet_lite.files import write_json
from resnet_lite.optim import OptimConfig, build_optimizer

VARIANTS = ("lite_r4b2", "lite_r4b3", "lite_r5b2")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Setting:
    name: str
    bf16: bool
    channels_last: bool
    compile: bool


SETTINGS = (
    Setting("fp32 eager", False, False, False),
    Setting("bf16", True, False, False),
    Setting("bf16 + channels_last", True, True, False),
    Setting("bf16 + channels_last + compile", True, True, True),
)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)




class Bench:
    """One variant under one setting: its model, optimizer and fixed batch, ready to time steps."""

    def __init__(self, variant: str, setting: Setting, args, device):
        torch.manual_seed(0)
        net = create_model(variant, num_classes=10).to(device)
        if setting.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.model = torch.compile(net) if setting.compile else net
        self.optimizer = build_optimizer(net, OptimConfig("sgd", lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4))
        g = torch.Generator().manual_seed(0)
        size = (args.batch_size, 3, args.image_size, args.image_size)
        self.pixels = torch.randint(0, 256, size, generator=g, dtype=torch.uint8).to(device)
        self.labels = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
        self.fixed = build_normalize(CIFAR_MEAN, CIFAR_STD)(self.pixels)
        self.augment = build_augment("fast", CIFAR_MEAN, CIFAR_STD)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting.bf16)
        self.variant, self.setting, self.args, self.device = variant, setting, args, device
        self.rates = {"step": [], "aug": []}
        start = time.perf_counter()
        for _ in range(args.warmup):  # the first call also compiles
            self.step(True)
        _sync(device)
        self.warmup_seconds = time.perf_counter() - start

    def step(self, with_augment: bool):
        x = self.augment(self.pixels, self.generator) if with_augment else self.fixed
        if self.setting.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            loss = F.cross_entropy(self.model(x).float(), self.labels, label_smoothing=0.2)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def time(self, column: str):
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(self.args.steps):
            self.step(column == "aug")
        _sync(self.device)
        self.rates[column].append(self.args.steps * self.args.batch_size / (time.perf_counter() - start))

    def result(self) -> dict:
        return {"variant": self.variant, **asdict(self.setting), "warmup_seconds": self.warmup_seconds,
                **{f"{c}_images_per_second": statistics.median(r) for c, r in self.rates.items()},
                **{f"{c}_images_per_second_all": r for c, r in self.rates.items()}}


def measure(variant: str, settings, args, device) -> list[dict]:
    """Every setting of one variant, timed in rounds (each round times every setting once), so that load from
    other jobs, which comes and goes, spreads over all settings instead of landing on one."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    benches = [Bench(variant, s, args, device) for s in settings]
    for _ in range(args.repeats):
        for bench in benches:
            for column in ("step", "aug"):
                bench.time(column)
    results = [b.result() for b in benches]
    if device.type == "cuda":
        for r in results:  # all settings' models live together: this is their joint peak
            r["peak_memory_mib_all_settings"] = torch.cuda.max_memory_allocated(device) / 2**20
    return results


def table(results: list[dict], macs: dict) -> str:
    lines = ["| variant | setting | step img/s | x fp32 | +aug img/s | x fp32 | step TFLOP/s | warm-up s |",
             "|---|---|---|---|---|---|---|---|"]
    base = {r["variant"]: r for r in results if r["name"] == SETTINGS[0].name}
    for r in results:
        b = base[r["variant"]]
        tflops = 6 * macs[r["variant"]] * r["step_images_per_second"] / 1e12
        lines.append(f"| {r['variant']} | {r['name']} | {r['step_images_per_second']:,.0f} | "
                     f"{r['step_images_per_second'] / b['step_images_per_second']:.2f} | {r['aug_images_per_second']:,.0f} | "
                     f"{r['aug_images_per_second'] / b['aug_images_per_second']:.2f} | {tflops:.3g} | {r['warmup_seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile setting (slow to compile on a CPU)")
    p.add_argument("--compile-variants", nargs="+", metavar="VARIANT",
                   help="run the torch.compile setting for these variants only (default: all); compiling costs ~a minute each")
    p.add_argument("--quick", action="store_true", help="16x16 images, batch 8, 3 rounds of 2 steps after 1 warm-up: a CPU smoke run")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--json", metavar="PATH", help="also write the results and environment as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.batch_size, args.steps, args.warmup, args.repeats = 16, 8, 2, 1, 3
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    compiled = set() if args.no_compile else set(args.compile_variants or args.variants)
    env = {"hardware": hardware(device), "torch": torch.__version__, "python": platform.python_version(),
           "date": str(datetime.date.today()), "command": "python " + " ".join(sys.argv),
           "batch_size": args.batch_size, "image_size": args.image_size, "steps": args.steps,
           "warmup": args.warmup, "repeats": args.repeats, "load_average": os.getloadavg()}
    print(f"throughput: train images/s, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"median of {args.repeats} x {args.steps} steps after {args.warmup} warm-up")
    print(f"hardware: {env['hardware']}; torch {env['torch']}; python {env['python']}; {env['date']}; "
          f"load average {env['load_average'][0]:.1f}")
    print(f"command: {env['command']}", flush=True)
    macs = {v: count_macs(create_model(v, num_classes=10), (3, args.image_size, args.image_size)) for v in args.variants}
    results = []
    for variant in args.variants:
        settings = [s for s in SETTINGS if variant in compiled or not s.compile]
        for r in measure(variant, settings, args, device):
            results.append(r)
            print(f"  {variant:10s} {r['name']:32s} step {r['step_images_per_second']:10,.0f}  "
                  f"+aug {r['aug_images_per_second']:10,.0f} img/s  (warm-up {r['warmup_seconds']:.1f} s)", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()  # the next variant compiles from a clean state: warm-up times stay comparable
        if args.json:  # after every variant: a run stopped by a time limit keeps what it measured
            write_json({"env": env, "macs": macs, "results": results, "table": table(results, macs)}, args.json)
    print(table(results, macs))
    return results


if __name__ == "__main__":
    main()
