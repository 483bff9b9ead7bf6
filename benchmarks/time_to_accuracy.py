"""Time to accuracy: train a preset over several seeds; wall time and epochs until the test accuracy first reaches
each target (the seed's 91.47%, and 94%), and the final-epoch accuracy as mean +- std over the seeds.

    python benchmarks/time_to_accuracy.py --preset fast --data imagefolder:/tmp/cifar10-jpeg --seeds 3
    python benchmarks/time_to_accuracy.py --preset model5 --data cifar10 --seeds 1 --runner subprocess --run-timeout 300
    python benchmarks/time_to_accuracy.py --preset fast --data imagefolder:/tmp/cifar10-jpeg --subset 5000 1000 \\
        batch_size=256 optim.lr=0.2 epochs=8 compile=false            # a CPU sanity run on 5k images
    python benchmarks/time_to_accuracy.py --quick                     # CPU smoke run on tiny synthetic data

Time counts training only, as airbench counts it: the per-epoch training seconds the trainer measures (augmentation,
forward, backward, optimizer and EMA steps, with the device synchronised at the end of the epoch), without the
one-time data load, the evaluation after each epoch and checkpoint writing. metrics.jsonl records them as
images_per_second = epoch images / training seconds, so the seconds are read back as epoch images / images_per_second.
Compilation: in-process runs start with an untimed warm-up run of the same preset (1 epoch, another seed) so that
the seeds reuse what it compiled; whatever compile work still lands in a seed's first epoch is shown by the
`steady` figures, which count epoch 1 at the median time of the later epochs. Accuracy is the test accuracy the
trainer evaluates after each epoch (with the preset's EMA and TTA); "final" is the last epoch's, never the best.
"""
import argparse
import contextlib
import datetime
import io
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _machine import hardware  # benchmarks/ is on sys.path when a script runs
from resnet_lite.config import resolve_config
from resnet_lite.data import load_data
from resnet_lite.files import read_metrics, write_json
from resnet_lite.train import train

TARGETS = (0.9147, 0.94)  # the seed's model 5 (best epoch of 70), and airbench94's bar
QUICK = ["data.spec=synthetic", "data.synthetic_train=1024", "data.synthetic_test=256", "data.image_size=16",
         "batch_size=128", "eval_batch_size=128", "epochs=3", "compile=false", "optim.lr=0.1"]


def train_seconds(rows: list[dict], epoch_images: list[int]) -> list[float]:
    """Training seconds of each epoch: the trainer writes images_per_second = epoch images / training seconds."""
    return [n / r["images_per_second"] for r, n in zip(rows, epoch_images)]


def time_to_targets(rows: list[dict], seconds: list[float], targets) -> dict:
    """target -> {epoch, seconds} of the first evaluated epoch with test_acc >= target (training seconds up to and
    including that epoch), or None when no epoch reached it."""
    out = {}
    for target in targets:
        elapsed, out[f"{target:g}"] = 0.0, None
        for row, s in zip(rows, seconds):
            elapsed += s
            if row["test_acc"] is not None and row["test_acc"] >= target:
                out[f"{target:g}"] = {"epoch": row["epoch"], "seconds": elapsed}
                break
    return out


def subset_imagefolder(root: Path, n_train: int, n_test: int, dest: Path) -> Path:
    """An ImageFolder tree under `dest` of symbolic links to the first n/classes files of each class of `root`."""
    for split, n in (("train", n_train), ("test", n_test)):
        classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        for c in classes:
            folder = dest / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for f in sorted((root / split / c).iterdir())[: n // len(classes)]:
                if not (folder / f.name).exists():
                    (folder / f.name).symlink_to(f.resolve())
    return dest


def _run_in_process(cfg) -> tuple[dict, list[dict]]:
    with contextlib.redirect_stdout(io.StringIO()):  # keep the trainer's tables out of the benchmark's output
        summary = train(cfg, overwrite=True)  # a measured run starts afresh, also in the --out of an earlier call
    return summary, read_metrics(Path(cfg.output_dir) / "metrics.jsonl")


def _run_subprocess(preset, overrides, out, timeout) -> tuple[dict | None, list[dict]]:
    """A separate `python -m resnet_lite.train`; when it outlives `timeout` it is stopped and its epochs so far count."""
    cmd = [sys.executable, "-m", "resnet_lite.train", *(["--variant", preset] if preset else []), *overrides,
           f"output_dir={out}", "--overwrite"]
    with open(Path(out).parent / f"{Path(out).name}.log", "w") as log:
        try:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=True)
        except subprocess.TimeoutExpired:
            pass
    summary_file = Path(out) / "summary.json"
    return (json.loads(summary_file.read_text()) if summary_file.exists() else None), read_metrics(Path(out) / "metrics.jsonl")


def _mean_std(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} ± {std:.2g}"


def report(preset: str, seeds: list[dict], targets, epochs: int) -> str:
    """A markdown table: one row per seed, then mean ± std (std over seeds, n - 1)."""
    head = ["seed", "epochs done", "final test acc %", "train s", "steady train s", "epoch-1 s", "median epoch s"]
    for t in targets:
        head += [f"epoch ≥{100 * t:.2f}%", f"s to {100 * t:.2f}%", f"steady s to {100 * t:.2f}%"]
    lines = [f"**{preset}** ({epochs} epochs)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(s):
        row = [str(s["seed"]), f"{len(s['rows'])}/{epochs}",
               f"{100 * s['final_test_acc']:.2f}" if s["final_test_acc"] is not None else "-",
               f"{s['train_seconds']:.2f}", f"{s['steady_train_seconds']:.2f}", f"{s['epoch_seconds'][0]:.2f}"
               if s["epoch_seconds"] else "-", f"{s['median_epoch_seconds']:.3f}" if s["median_epoch_seconds"] else "-"]
        for t in targets:
            hit, steady = s["reached"][f"{t:g}"], s["reached_steady"][f"{t:g}"]
            row += [str(hit["epoch"]) if hit else "not reached", f"{hit['seconds']:.2f}" if hit else "-",
                    f"{steady['seconds']:.2f}" if steady else "-"]
        return row

    for s in seeds:
        lines.append("| " + " | ".join(cells(s)) + " |")
    done = [s for s in seeds if s["rows"]]
    mean = ["mean ± std", f"{len(done)} seeds", _mean_std([100 * s["final_test_acc"] for s in done if s["complete"]]),
            _mean_std([s["train_seconds"] for s in done if s["complete"]]),
            _mean_std([s["steady_train_seconds"] for s in done if s["complete"]]), "", ""]
    for t in targets:
        hits = [s["reached"][f"{t:g}"] for s in done]
        steady = [s["reached_steady"][f"{t:g}"] for s in done]
        reached = sum(h is not None for h in hits)
        mean += [f"{_mean_std([h['epoch'] for h in hits if h])} ({reached}/{len(done)} reached)",
                 _mean_std([h["seconds"] for h in hits if h]), _mean_std([h["seconds"] for h in steady if h])]
    lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines)




def run_seed(preset, seed, overrides, out, args, epoch_images, epochs) -> dict:
    """One training run and what its metrics say about time to each target."""
    t0 = time.perf_counter()
    run_dir = out / f"{preset}-seed{seed}"
    run_overrides = [*overrides, f"seed={seed}"]
    if args.runner == "inprocess":
        summary, rows = _run_in_process(resolve_config(preset, overrides=[*run_overrides, f"output_dir={run_dir}"]))
    else:
        summary, rows = _run_subprocess(preset, run_overrides, run_dir, args.run_timeout)
    wall = time.perf_counter() - t0
    seconds = train_seconds(rows, [epoch_images] * len(rows))
    median = statistics.median(seconds[1:]) if len(seconds) > 1 else (seconds[0] if seconds else None)
    steady = ([median] + seconds[1:]) if seconds else []
    final = rows[-1]["test_acc"] if rows else None
    result = {"seed": seed, "complete": len(rows) == epochs, "final_test_acc": final,
              "best_test_acc": max((r["test_acc"] for r in rows if r["test_acc"] is not None), default=None),
              "train_seconds": sum(seconds), "steady_train_seconds": sum(steady), "epoch_seconds": seconds,
              "median_epoch_seconds": median, "wall_seconds": wall,
              "reached": time_to_targets(rows, seconds, args.targets),
              "reached_steady": time_to_targets(rows, steady, args.targets),
              "rows": rows, "summary": {k: v for k, v in (summary or {}).items() if k != "per_class_acc"}}
    hits = ", ".join(f"{100 * float(t):.2f}%: " + (f"epoch {h['epoch']}, {h['seconds']:.2f} s" if h else "not reached")
                     for t, h in result["reached"].items())
    acc = f"{100 * final:.2f}%" if final is not None else "-"
    print(f"  {preset} seed {seed}: {len(rows)}/{epochs} epochs, final test acc {acc}, train {sum(seconds):.2f} s "
          f"(steady {sum(steady):.2f} s); {hits}; wall {wall:.1f} s", flush=True)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings over the preset, as for resnet_lite.train")
    p.add_argument("--preset", nargs="+", default=["fast"], help="one or more presets, run in this order in one process")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--data", help="data.spec (default: the preset's)")
    p.add_argument("--data-dir", help="data.root: where decoded data is cached")
    p.add_argument("--subset", nargs=2, type=int, metavar=("TRAIN", "TEST"),
                   help="use the first TRAIN / TEST images (split evenly over classes) of an imagefolder:PATH dataset")
    p.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    p.add_argument("--runner", choices=["inprocess", "subprocess"], default="inprocess")
    p.add_argument("--run-timeout", type=float, help="subprocess runner: stop a run after this many seconds and "
                                                     "report its epochs so far")
    p.add_argument("--no-warmup", action="store_true", help="in-process: skip the untimed 1-epoch warm-up run")
    p.add_argument("--budget", type=float, help="seconds: start no further seed once the next would likely end later")
    p.add_argument("--out", help="folder for the run directories (default: a temporary folder, removed)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (rewritten after every seed)")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data, no compile, 2 seeds: a CPU smoke run")
    args = p.parse_args(argv)
    start = time.perf_counter()
    overrides = list(args.overrides)
    if args.quick:
        overrides, args.seeds = [*QUICK, *overrides], min(args.seeds, 2)
    # what is timed is training; checkpoint and best-model writes would only eat into a budget (--budget, gpu_run.sh)
    overrides += ["wandb=disabled", "checkpoint_every_epochs=0", "save_best=false"]
    with contextlib.ExitStack() as stack:
        out = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        out.mkdir(parents=True, exist_ok=True)
        if args.data:
            overrides.insert(0, f"data.spec={args.data}")
        if args.data_dir:
            overrides.insert(0, f"data.root={args.data_dir}")
        if args.subset:
            spec = resolve_config(args.preset[0], overrides=overrides).data.spec
            if not spec.startswith("imagefolder:"):
                p.error("--subset needs an imagefolder:PATH dataset")
            root = subset_imagefolder(Path(spec.split(":", 1)[1]).expanduser(), *args.subset, out / "subset")
            overrides.append(f"data.spec=imagefolder:{root}")
        configs = {name: resolve_config(name, overrides=overrides) for name in args.preset}
        t0 = time.perf_counter()
        ds = load_data(configs[args.preset[0]].data)  # decodes and caches once
        n_train = len(ds.train)
        del ds
        env = {"hardware": hardware(), "torch": torch.__version__, "python": platform.python_version(),
               "date": str(datetime.date.today()), "command": "python " + " ".join(sys.argv),
               "overrides": overrides, "data": configs[args.preset[0]].data.spec, "train_images": n_train,
               "data_load_seconds": time.perf_counter() - t0, "runner": args.runner}
        print(f"time to accuracy: presets {', '.join(args.preset)}, {args.seeds} seeds, data {env['data']} "
              f"({n_train} training images)", flush=True)
        print(f"hardware: {env['hardware']}; torch {env['torch']}; {env['date']}; command: {env['command']}", flush=True)

        if args.runner == "inprocess" and not args.no_warmup:
            t0 = time.perf_counter()
            _run_in_process(resolve_config(args.preset[0], overrides=[*overrides, "epochs=1", "seed=12345",
                                                                       f"output_dir={out / 'warmup'}"]))
            env["warmup_seconds"] = time.perf_counter() - t0
            print(f"  warm-up run ({args.preset[0]}, 1 epoch, untimed): {env['warmup_seconds']:.1f} s", flush=True)

        results, tables = {}, []
        for name, cfg in configs.items():
            if cfg.data.spec != env["data"] or cfg.data.holdout != configs[args.preset[0]].data.holdout:
                p.error("all presets of one call must use the same data; give --data")
            epoch_images = (n_train // cfg.batch_size) * cfg.batch_size if cfg.drop_last else n_train
            results[name] = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "epoch_images": epoch_images, "seeds": []}
            last_run = None
            for seed in range(args.seeds):
                if args.budget and last_run and time.perf_counter() - start + last_run > args.budget:
                    print(f"  {name} seed {seed}: skipped, the budget of {args.budget:.0f} s would be exceeded", flush=True)
                    break
                t0 = time.perf_counter()
                results[name]["seeds"].append(run_seed(name, seed, overrides, out, args, epoch_images, cfg.epochs))
                last_run = time.perf_counter() - t0
                if args.json:
                    write_json({"env": env, "presets": results}, args.json)
            results[name]["table"] = report(name, results[name]["seeds"], args.targets, cfg.epochs)
            tables.append(results[name]["table"])
        text = "\n\n".join(tables)
        print(text)
        if args.json:
            write_json({"env": env, "presets": results, "table": text}, args.json)
    return results


if __name__ == "__main__":
    main()
