"""Training images/s per variant: fp32 eager, then bf16 autocast, + channels_last, + torch.compile, each as a ratio
to fp32 eager measured in the same run.

    python benchmarks/throughput.py                                # a GPU: batch 1024, the three seed variants
    python benchmarks/throughput.py --variants lite_r4b2 --json out.json
    python benchmarks/throughput.py --quick --no-compile           # CPU smoke run, one to two minutes on 2 cores
    python benchmarks/throughput.py --settings eager --json t.json   # the eager settings only
    python benchmarks/throughput.py --settings compile --json t.json --append   # then the compiled one, added to t.json

One step is what the trainer does per batch: forward, label-smoothed cross-entropy (mean), backward, SGD with
Nesterov momentum (fused on CUDA) and zero_grad, on one fixed batch of random pixels. Column `step` times that on a
batch normalised once; column `+aug` adds the on-device `fast` augmentation (flip, reflect-pad-2 translate) of a
uint8 batch inside every step, as the trainer runs it. Compile wraps the model only, as the trainer does.
Each cell is the median over `--repeats` rounds of `--steps` steps, after `--warmup` steps; a round times every
eager setting of a variant in turn, so load that comes and goes hits them alike. CUDA work is synchronised before each
clock read. TFLOP/s counts 3 x forward MACs x 2 (forward + backward as twice the forward).

Order and partial results (a run stopped by a time limit keeps what it measured): the eager settings of every variant
are timed first, then the compiled setting of each variant, which is built (compiled) only then; the JSON is
rewritten after every round of every setting. A setting that fails to build or run (a compile error, say) is recorded
with its error, and the run goes on. `--append` keeps the results already in `--json` and skips the settings there.
On CUDA, `gpu busy %` is the kernels' time per step (torch.profiler over `--profile-steps` steps with augmentation,
kernel durations summed) over the measured step time: far under 100% means the GPU waits for the host to launch work
(launch-bound).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from _machine import hardware  # benchmarks/ is on sys.path when a script runs

from resnet_lite.data.augment import build_augment
from resnet_lite.data.images import build_normalize
from resnet_lite.models.lite import create_model
from resnet_lite.models.tools import count_macs
from resnet_lite.outputs.files import write_json
from resnet_lite.training.optim import OptimConfig, build_optimizer

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
GROUPS = {"all": SETTINGS, "eager": tuple(s for s in SETTINGS if not s.compile),
          "compile": tuple(s for s in SETTINGS if s.compile)}


def select_settings(names) -> list[Setting]:
    """Settings by name or group (all, eager, compile), in SETTINGS order."""
    chosen = set()
    for name in names:
        if name in GROUPS:
            chosen.update(GROUPS[name])
        else:
            match = [s for s in SETTINGS if s.name == name]
            if not match:
                raise SystemExit(f"unknown setting {name!r}: one of {', '.join(GROUPS)} or "
                                 f"{', '.join(repr(s.name) for s in SETTINGS)}")
            chosen.update(match)
    return [s for s in SETTINGS if s in chosen]


def _reason(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {' / '.join(lines)[:300]}"  # a compile error's cause is on its second line


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
        self.model = torch.compile(net, backend=args.compile_backend) if setting.compile else net
        self.optimizer = build_optimizer(
            net, OptimConfig("sgd", lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4))
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
        self.kernel_seconds_per_step = None
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

    def profile(self, steps: int) -> None:
        """Kernel time per step (with augmentation) from torch.profiler's CUDA activity; None where unavailable."""
        if self.device.type != "cuda" or steps <= 0:
            return
        try:
            from torch.profiler import ProfilerActivity, profile

            _sync(self.device)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(steps):
                    self.step(True)
                _sync(self.device)
            cuda = torch.autograd.DeviceType.CUDA
            # device events (kernels, copies, sets) on one stream do not overlap: their durations add up to busy time
            total_us = sum(e.device_time_total for e in prof.key_averages() if getattr(e, "device_type", None) == cuda)
            if not total_us:
                total_us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == cuda)
            self.kernel_seconds_per_step = total_us / 1e6 / steps if total_us else None
        except Exception as e:  # the profiler is an extra: its failure costs the column, not the run
            print(f"  (profiler failed for {self.variant} {self.setting.name}: {_reason(e)})", flush=True)

    def result(self) -> dict:
        rates = {c: statistics.median(r) for c, r in self.rates.items() if r}
        out = {"variant": self.variant, **asdict(self.setting), "warmup_seconds": self.warmup_seconds,
               "rounds": len(self.rates["aug"]), **{f"{c}_images_per_second": v for c, v in rates.items()},
               **{f"{c}_images_per_second_all": r for c, r in self.rates.items()}}
        if self.kernel_seconds_per_step and rates.get("aug"):
            out["kernel_seconds_per_step"] = self.kernel_seconds_per_step
            out["gpu_busy_fraction"] = self.kernel_seconds_per_step * rates["aug"] / self.args.batch_size
        if self.device.type == "cuda":
            out["peak_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


def _failed(variant: str, setting: Setting, e: BaseException) -> dict:
    print(f"  {variant:10s} {setting.name:32s} FAILED: {_reason(e)}", flush=True)
    return {"variant": variant, **asdict(setting), "error": _reason(e)}


def measure(variant: str, settings, args, device, record) -> None:
    """Time `settings` of one variant in rounds (each round times every setting once), so that load from other jobs,
    which comes and goes, spreads over all settings instead of landing on one. record(results) after every setting's
    every round, with every setting's medians so far; a setting that fails to build or run is recorded as failed."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    benches, failed = [], []
    for setting in settings:
        try:
            benches.append(Bench(variant, setting, args, device))
        except Exception as e:  # a compile error, out of memory: recorded, the other settings go on
            failed.append(_failed(variant, setting, e))
            _cleanup(device)
    for _ in range(args.repeats):
        for bench in list(benches):
            try:
                for column in ("step", "aug"):
                    bench.time(column)
            except Exception as e:
                benches.remove(bench)
                failed.append(_failed(variant, bench.setting, e))
                _cleanup(device)
            record([b.result() for b in benches if b.rates["aug"]] + failed)
    for bench in benches:
        bench.profile(args.profile_steps)
    results = [b.result() for b in benches] + failed
    record(results)
    for r in results:
        if "error" not in r:
            print(f"  {variant:10s} {r['name']:32s} step {r['step_images_per_second']:10,.0f}  +aug "
                  f"{r['aug_images_per_second']:10,.0f} img/s  (warm-up {r['warmup_seconds']:.1f} s"
                  + (f", GPU busy {100 * r['gpu_busy_fraction']:.0f}%" if r.get("gpu_busy_fraction") else "") + ")",
                  flush=True)


def _cleanup(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # the next compile starts from a clean state: warm-up times stay comparable


def table(results: list[dict], macs: dict) -> str:
    lines = ["| variant | setting | step img/s | x fp32 | +aug img/s | x fp32 | step TFLOP/s | GPU busy % "
             "| warm-up s |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {r["variant"]: r for r in results if r["name"] == SETTINGS[0].name and "error" not in r}
    order = {s.name: i for i, s in enumerate(SETTINGS)}
    variants = list(dict.fromkeys(r["variant"] for r in results))
    for r in sorted(results, key=lambda r: (variants.index(r["variant"]), order.get(r["name"], 99))):
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['name']} | failed: {r['error'][:120]} | | | | | | |")
            continue
        b = base.get(r["variant"])

        def ratio(column, r=r, b=b):  # called within this iteration; bound to it all the same
            return f"{r[column] / b[column]:.2f}" if b else "-"
        tflops = 6 * macs[r["variant"]] * r["step_images_per_second"] / 1e12
        busy = f"{100 * r['gpu_busy_fraction']:.0f}" if r.get("gpu_busy_fraction") else "-"
        lines.append(f"| {r['variant']} | {r['name']} | {r['step_images_per_second']:,.0f} | "
                     f"{ratio('step_images_per_second')} | {r['aug_images_per_second']:,.0f} | "
                     f"{ratio('aug_images_per_second')} | {tflops:.3g} | {busy} | {r['warmup_seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--settings", nargs="+", default=["all"], metavar="SETTING",
                   help="settings to time: all (default), eager, compile, or names such as 'bf16 + channels_last'")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile setting (slow to compile on a CPU)")
    p.add_argument("--compile-variants", nargs="+", metavar="VARIANT",
                   help="run the torch.compile setting for these variants only (default: all); "
                        "compiling costs ~a minute each")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (eager or aot_eager trace the same graph without generating code: a "
                        "quick check of the compile path on a CPU)")
    p.add_argument("--profile-steps", type=int, default=10,
                   help="CUDA: steps profiled for the GPU busy column (0: none)")
    p.add_argument("--quick", action="store_true",
                   help="16x16 images, batch 8, 3 rounds of 2 steps after 1 warm-up: a CPU smoke run")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--json", metavar="PATH", help="also write the results and environment as JSON (after every round)")
    p.add_argument("--append", action="store_true",
                   help="keep the results already in --json and skip the settings measured there (a second call "
                        "finishes what a first one did not)")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.batch_size, args.steps, args.warmup, args.repeats = 16, 8, 2, 1, 3
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    compiled = set() if args.no_compile else set(args.compile_variants or args.variants)
    settings = select_settings(args.settings)
    env = {"hardware": hardware(device), "torch": torch.__version__, "python": platform.python_version(),
           "date": str(datetime.date.today()), "command": "python " + " ".join(sys.argv),
           "batch_size": args.batch_size, "image_size": args.image_size, "steps": args.steps,
           "warmup": args.warmup, "repeats": args.repeats, "compile_backend": args.compile_backend,
           "load_average": os.getloadavg()}
    earlier, envs = [], [env]
    if args.append and args.json and os.path.exists(args.json):
        with open(args.json) as f:
            old = json.load(f)
        same = all(old["env"].get(k) == env[k] for k in ("batch_size", "image_size", "steps", "warmup", "repeats"))
        if same:
            earlier, envs = old["results"], [*old.get("envs", [old["env"]]), env]
        else:
            print(f"--append: {args.json} was measured with other settings; starting afresh", flush=True)
    done = {(r["variant"], r["name"]) for r in earlier if "error" not in r}
    print(f"throughput: train images/s, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"median of {args.repeats} x {args.steps} steps after {args.warmup} warm-up")
    print(f"hardware: {env['hardware']}; torch {env['torch']}; python {env['python']}; {env['date']}; "
          f"load average {env['load_average'][0]:.1f}")
    print(f"command: {env['command']}", flush=True)
    macs = {v: count_macs(create_model(v, num_classes=10), (3, args.image_size, args.image_size))
            for v in args.variants}
    results = [r for r in earlier if (r["variant"], r["name"]) in done]

    def record(variant_results):
        nonlocal results
        if args.json:  # every round: a run stopped by a time limit keeps what it measured
            ours = {(r["variant"], r["name"]) for r in variant_results}
            merged = [r for r in results if (r["variant"], r["name"]) not in ours] + variant_results
            write_json({"env": envs[0], "envs": envs, "macs": macs, "results": merged, "table": table(merged, macs)},
                       args.json)

    # the eager settings of every variant first: cheap to build, and a compile that fails or takes long costs none
    # of them; then each variant's compiled setting
    plan = [(v, [s for s in settings if not s.compile]) for v in args.variants]
    plan += [(v, [s]) for v in args.variants for s in settings if s.compile and v in compiled]
    for variant, group in plan:
        group = [s for s in group if (variant, s.name) not in done]
        if not group:
            continue
        measured = []

        def keep(variant_results, measured=measured):
            measured[:] = variant_results
            record(variant_results)
        measure(variant, group, args, device, keep)
        keys = {(r["variant"], r["name"]) for r in measured}
        results = [r for r in results if (r["variant"], r["name"]) not in keys] + measured
        _cleanup(device)
    if args.json:
        write_json({"env": envs[0], "envs": envs, "macs": macs, "results": results, "table": table(results, macs)},
                   args.json)
    print(table(results, macs))
    return results


if __name__ == "__main__":
    main()
