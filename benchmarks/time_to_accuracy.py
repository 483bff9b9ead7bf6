"""Time to accuracy: train a preset over several seeds; wall time and epochs until the test accuracy first reaches
each target (the report's 91.47%, and 94%), and the final-epoch accuracy as mean +- std over the seeds.

    python benchmarks/time_to_accuracy.py --preset fast --data imagefolder:/tmp/cifar10-jpeg --seeds 3
    python benchmarks/time_to_accuracy.py --preset model5 --data cifar10 --seeds 1 --runner subprocess --run-timeout 300
    python benchmarks/time_to_accuracy.py --preset fast --data imagefolder:/tmp/cifar10-jpeg --subset 5000 1000 \\
        batch_size=256 optim.lr=0.2 epochs=8 compile=false            # a CPU sanity run on 5k images
    python benchmarks/time_to_accuracy.py --quick                     # CPU smoke run on tiny synthetic data
    python benchmarks/time_to_accuracy.py --preset fast fast94 --interleave --seeds 3 --json t.json --skip-done ...

Time counts training only, as airbench counts it: the per-epoch training seconds the trainer measures (augmentation,
forward, backward, optimizer and EMA steps, with the device synchronised at the end of the epoch), without the
one-time data load, the evaluation after each epoch and checkpoint writing. metrics.jsonl records them as
images_per_second = epoch images / training seconds, so the seconds are read back as epoch images / images_per_second.
Compilation: in-process runs start with an untimed warm-up run of the same preset (1 epoch, another seed) so that
the seeds reuse what it compiled; whatever compile work still lands in a seed's first epoch is shown by the
`steady` figures, which count epoch 1 at the median time of the later epochs. Accuracy is the test accuracy the
trainer evaluates after each epoch (with the preset's EMA and TTA); "final" is the last epoch's, never the best.

Failures stay inside their run: a run that fails (a non-finite loss, a compile error, out of memory) is recorded with
its error and the next one starts; a compiled run that fails for any other reason than a non-finite loss is retried
once with compile=false, and the later runs go without compile (recorded). A failed training process (subprocess
runner) leaves its last 40 log lines in the output and its epochs so far in the results. A SIGTERM to the benchmark
(a `timeout` around it) stops it after the current run has saved what it could; the JSON, rewritten after every
run, is written once more. `--skip-done` (with --json) runs only the seeds an earlier call did not finish, and
`--resume` continues a subprocess run's checkpoint, so a second call finishes what a first one did not.
"""
import argparse
import contextlib
import datetime
import io
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import hardware  # benchmarks/ is on sys.path when a script runs

from resnet_lite.config import resolve_config
from resnet_lite.data.sources import load_data
from resnet_lite.outputs.files import read_metrics, write_json
from resnet_lite.train import train
from resnet_lite.training.signals import EXIT_NONFINITE, EXIT_PREEMPTED, NonFiniteLoss, Preempted

TARGETS = (0.9147, 0.94)  # the report's model 5 (best epoch of 70), and airbench94's bar
QUICK = ["data.spec=synthetic", "data.synthetic_train=1024", "data.synthetic_test=256", "data.image_size=16",
         "batch_size=128", "eval_batch_size=128", "epochs=3", "compile=false", "optim.lr=0.1"]
LOG_TAIL = 40  # lines of a failed training process's log printed into the benchmark's output
GRACE = 15  # seconds a stopped training process gets to save its checkpoint before it is killed


def train_seconds(rows: list[dict], epoch_images: list[int]) -> list[float]:
    """Training seconds of each epoch: the trainer writes images_per_second = epoch images / training seconds."""
    return [n / r["images_per_second"] for r, n in zip(rows, epoch_images, strict=True)]


def time_to_targets(rows: list[dict], seconds: list[float], targets) -> dict:
    """target -> {epoch, seconds} of the first evaluated epoch with test_acc >= target (training seconds up to and
    including that epoch), or None when no epoch reached it."""
    out = {}
    for target in targets:
        elapsed, out[f"{target:g}"] = 0.0, None
        for row, s in zip(rows, seconds, strict=True):
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


class Stopped(Exception):
    """A stop signal (SIGTERM: the caller's time limit) reached the benchmark itself: write what was measured, stop."""


def _on_stop_signal(signum, frame):
    signal.signal(signum, signal.SIG_IGN)  # once: a second signal must not interrupt the writing of the results
    raise Stopped(signal.Signals(signum).name)


def _reason(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {' / '.join(lines)[:300]}"  # a compile error's cause is on its second line


def _run_in_process(cfg) -> tuple[dict, list[dict]]:
    with contextlib.redirect_stdout(io.StringIO()):  # keep the trainer's tables out of the benchmark's output
        summary = train(cfg, overwrite=True)  # a measured run starts afresh, also in the --out of an earlier call
    return summary, read_metrics(Path(cfg.output_dir) / "metrics.jsonl")


def _tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run_subprocess(preset, overrides, out, timeout, resume=False) -> dict:
    """A separate `python -m resnet_lite.train`. When it outlives `timeout` it gets SIGTERM (the trainer saves a
    checkpoint after the current step and exits 75), then SIGKILL after GRACE seconds; its epochs so far count, and
    with `resume` a later call continues its checkpoint. Returns {summary, rows, returncode, stopped, resumed, log}."""
    out = Path(out)
    resumed = resume and any((out / "checkpoints").glob("step-*.pt"))
    cmd = [sys.executable, "-m", "resnet_lite.train", *(["--variant", preset] if preset else []), *overrides,
           f"output_dir={out}", "--resume" if resume else "--overwrite"]
    log_path = out.parent / f"{out.name}.log"
    stopped, signalled = None, False
    with open(log_path, "a" if resumed else "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stopped = f"its time limit ({timeout:.0f} s)"
        except Stopped as e:  # our own limit: the child got the same signal from `timeout` (one process group)
            stopped, signalled = f"{e} to the benchmark", True
        if stopped:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=GRACE)
            except (subprocess.TimeoutExpired, Stopped):
                child.kill()
                child.wait()
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() and child.returncode == 0 else None
    return {"summary": summary, "rows": read_metrics(out / "metrics.jsonl"), "returncode": child.returncode,
            "stopped": stopped, "signalled": signalled, "resumed": bool(resumed), "log": log_path}


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
    head.append("notes")
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
        return row + [notes(s)]

    for s in seeds:
        lines.append("| " + " | ".join(cells(s)) + " |")
    done = [s for s in seeds if s["rows"]]
    complete = sum(bool(s["complete"]) for s in done)
    mean = ["mean ± std", f"{complete} complete seeds",
            _mean_std([100 * s["final_test_acc"] for s in done if s["complete"]]),
            _mean_std([s["train_seconds"] for s in done if s["complete"]]),
            _mean_std([s["steady_train_seconds"] for s in done if s["complete"]]), "", ""]
    for t in targets:
        hits = [s["reached"][f"{t:g}"] for s in done]
        steady = [s["reached_steady"][f"{t:g}"] for s in done]
        reached = sum(h is not None for h in hits)
        mean += [f"{_mean_std([h['epoch'] for h in hits if h])} ({reached}/{len(done)} reached)",
                 _mean_std([h["seconds"] for h in hits if h]), _mean_std([h["seconds"] for h in steady if h])]
    lines.append("| " + " | ".join(mean + ["complete seeds only"]) + " |")
    return "\n".join(lines)


def notes(s: dict) -> str:
    """What a seed's row needs said beside its figures: an error, a stop, a resume, compile off."""
    parts = [f"error: {s['error'][:160]}" if s.get("error") else "",
             f"stopped by {s['stopped']}" if s.get("stopped") else "",
             "resumed from a checkpoint" if s.get("resumed") else "",
             "compile failed, retried without" if s.get("retried_without_compile") else
             ("compile off after an earlier failure" if s.get("compile_error") else "")]
    return "; ".join(p for p in parts if p).replace("|", "/")


def _result(seed, rows, summary, epoch_images, epochs, targets, wall, **extra) -> dict:
    seconds = train_seconds(rows, [epoch_images] * len(rows))
    median = statistics.median(seconds[1:]) if len(seconds) > 1 else (seconds[0] if seconds else None)
    steady = ([median] + seconds[1:]) if seconds else []
    final = rows[-1]["test_acc"] if rows else None
    return {"seed": seed, "complete": len(rows) == epochs and not extra.get("error"), "epochs_done": len(rows),
            "final_test_acc": final,
            "best_test_acc": max((r["test_acc"] for r in rows if r["test_acc"] is not None), default=None),
            "train_seconds": sum(seconds), "steady_train_seconds": sum(steady), "epoch_seconds": seconds,
            "median_epoch_seconds": median, "wall_seconds": wall,
            "reached": time_to_targets(rows, seconds, targets),
            "reached_steady": time_to_targets(rows, steady, targets),
            "rows": rows, "summary": {k: v for k, v in (summary or {}).items() if k != "per_class_acc"},
            "compile": True, "compile_error": None, "retried_without_compile": False, "error": None, "stopped": None,
            **extra}


def _attempt(preset, seed, overrides, run_dir, args) -> dict:
    """One training run: {summary, rows, error, stopped, ...}; failures are caught and described, never raised, except
    a stop signal (Stopped, or the trainer's Preempted), after which nothing more may start."""
    if args.runner == "subprocess":
        done = _run_subprocess(preset, [*overrides, f"seed={seed}"], run_dir, args.run_timeout, resume=args.resume)
        rc, error = done["returncode"], None
        if rc != 0 and not done["stopped"]:
            what = {EXIT_NONFINITE: "non-finite loss", EXIT_PREEMPTED: "stopped by a signal"}.get(rc, "failed")
            error = f"the training process exited {rc} ({what}); see {done['log']}"
            print(f"  {preset} seed {seed}: {error}; its last {LOG_TAIL} lines:\n{_tail(done['log'])}", flush=True)
        return {**done, "error": error, "log": str(done["log"])}
    cfg = resolve_config(preset, overrides=[*overrides, f"seed={seed}", f"output_dir={run_dir}"])
    try:
        summary, rows = _run_in_process(cfg)
        return {"summary": summary, "rows": rows, "error": None, "stopped": None}
    except Preempted as e:  # our time limit reached the trainer first: it saved and stopped
        raise Stopped(str(e).split(";")[0]) from None
    except Stopped:
        raise
    except Exception as e:  # NonFiniteLoss, a compile error, out of memory...: recorded, the next run goes on
        print(f"  {preset} seed {seed}: {_reason(e)}", flush=True)
        return {"summary": None, "rows": read_metrics(run_dir / "metrics.jsonl"), "error": _reason(e),
                "exception": e, "stopped": None}


def run_seed(preset, seed, overrides, out, args, epoch_images, epochs, state) -> dict:
    """One seed, and what its metrics say about time to each target. A run that fails while compiling (any failure of
    a compiled run other than a non-finite loss) is retried once with compile=false, and so are the later runs
    (state["compile_broken"]); the result records both."""
    t0 = time.perf_counter()
    run_dir = out / f"{preset}-seed{seed}"
    compiles = state["compiles"][preset] and not state["compile_broken"]
    extra = {"compile": compiles}
    if state["compiles"][preset] and state["compile_broken"]:
        overrides = [*overrides, "compile=false"]
        extra["compile_error"] = f"compile off: an earlier run failed to compile ({state['compile_broken']})"
    try:
        done = _attempt(preset, seed, overrides, run_dir, args)
    except Stopped as e:
        state["stopped"] = str(e)
        done = {"summary": None, "rows": read_metrics(run_dir / "metrics.jsonl"), "error": None, "stopped": str(e)}
    if compiles and done["error"] and not isinstance(done.get("exception"), NonFiniteLoss) and not state["stopped"]:
        state["compile_broken"] = done["error"]
        print(f"  {preset} seed {seed}: retrying once with compile=false", flush=True)
        extra.update(compile=False, compile_error=done["error"], retried_without_compile=True)
        try:
            done = _attempt(preset, seed, [*overrides, "compile=false"], run_dir, args)
        except Stopped as e:
            state["stopped"] = str(e)
            done = {"summary": None, "rows": read_metrics(run_dir / "metrics.jsonl"), "error": None, "stopped": str(e)}
    done.pop("exception", None)
    if done.pop("signalled", False):
        state["stopped"] = done["stopped"]
    for key in ("returncode", "resumed", "log"):
        if key in done:
            extra[key] = done[key]
    result = _result(seed, done["rows"], done["summary"], epoch_images, epochs, args.targets,
                     time.perf_counter() - t0, **extra, error=done["error"], stopped=done["stopped"])
    hits = ", ".join(f"{100 * float(t):.2f}%: " + (f"epoch {h['epoch']}, {h['seconds']:.2f} s" if h else "not reached")
                     for t, h in result["reached"].items())
    acc = f"{100 * result['final_test_acc']:.2f}%" if result["final_test_acc"] is not None else "-"
    note = notes(result)
    print(f"  {preset} seed {seed}: {result['epochs_done']}/{epochs} epochs, final test acc {acc}, train "
          f"{result['train_seconds']:.2f} s (steady {result['steady_train_seconds']:.2f} s); {hits}; wall "
          f"{result['wall_seconds']:.1f} s" + (f"; {note}" if note else ""), flush=True)
    return result


def _earlier(path, env, names) -> dict:
    """--skip-done: the seeds of an earlier JSON at `path` measured with the same data and settings that need no rerun
    (complete, or failed: a failure recurs), by preset."""
    if not path or not Path(path).is_file():
        return {}
    old = json.loads(Path(path).read_text())
    if any(old.get("env", {}).get(k) != env[k] for k in ("overrides", "data", "runner")):
        print(f"  --skip-done: {path} was measured with other settings; all seeds run again", flush=True)
        return {}
    return {name: [s for s in old["presets"][name]["seeds"] if s.get("complete") or s.get("error")]
            for name in names if name in old.get("presets", {})}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings over the preset, as for resnet_lite.train")
    p.add_argument("--preset", nargs="+", default=["fast"],
                   help="one or more presets, run in this order in one process")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    p.add_argument("--interleave", action="store_true",
                   help="seed by seed over the presets (fast 0, fast94 0, fast 1, ...) instead of preset by preset: a "
                        "run cut short by --budget still has seeds of every preset")
    p.add_argument("--data", help="data.spec (default: the preset's)")
    p.add_argument("--data-dir", help="data.root: where decoded data is cached")
    p.add_argument("--subset", nargs=2, type=int, metavar=("TRAIN", "TEST"),
                   help="use the first TRAIN / TEST images (split evenly over classes) of an imagefolder:PATH dataset")
    p.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    p.add_argument("--runner", choices=["inprocess", "subprocess"], default="inprocess")
    p.add_argument("--run-timeout", type=float,
                   help="subprocess runner: stop a run (SIGTERM, so it saves a checkpoint) "
                        "after this many seconds and report its epochs so far")
    p.add_argument("--resume", action="store_true",
                   help="subprocess runner: continue a run's checkpoint in --out (left by a run stopped at its time "
                        "limit) instead of starting it again")
    p.add_argument("--no-warmup", action="store_true", help="in-process: skip the untimed 1-epoch warm-up run")
    p.add_argument("--budget", type=float, help="seconds: start no further seed once the next would likely end later")
    p.add_argument("--out", help="folder for the run directories (default: a temporary folder, removed)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (rewritten after every seed)")
    p.add_argument("--skip-done", action="store_true",
                   help="keep the seeds already in --json (same data and settings) that finished or failed, and run "
                        "only the others: a second call finishes what a first one did not")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data, no compile, 2 seeds: a CPU smoke run")
    args = p.parse_args(argv)
    start = time.perf_counter()
    previous_handler = signal.signal(signal.SIGTERM, _on_stop_signal)
    try:
        return _main(p, args, start)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def _main(p, args, start):
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
        first = configs[args.preset[0]].data
        for cfg in configs.values():
            if cfg.data.spec != first.spec or cfg.data.holdout != first.holdout:
                p.error("all presets of one call must use the same data; give --data")
        env = {"hardware": hardware(), "torch": torch.__version__, "python": platform.python_version(),
               "date": str(datetime.date.today()), "command": "python " + " ".join(sys.argv),
               "overrides": overrides, "data": configs[args.preset[0]].data.spec, "runner": args.runner,
               "seeds_requested": args.seeds}
        results = {name: {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "seeds": []}
                   for name, cfg in configs.items()}
        earlier = _earlier(args.json, env, args.preset) if args.skip_done else {}
        for name, seeds in earlier.items():
            results[name]["seeds"] = seeds
        order = ([(name, seed) for seed in range(args.seeds) for name in args.preset] if args.interleave else
                 [(name, seed) for name in args.preset for seed in range(args.seeds)])
        todo = [(n, s) for n, s in order if s not in {r["seed"] for r in results[n]["seeds"]}]
        state = {"compiles": {n: c.compile for n, c in configs.items()}, "compile_broken": None, "stopped": None}

        def write(final=False):
            data = {"env": env, "presets": results}
            if final:
                data["table"] = "\n\n".join(results[n]["table"] for n in args.preset)
            if args.json:
                write_json(data, args.json)

        try:
            t0 = time.perf_counter()
            ds = load_data(configs[args.preset[0]].data)  # decodes and caches once
            n_train = len(ds.train)
            del ds
            env.update(train_images=n_train, data_load_seconds=time.perf_counter() - t0)
            for name, cfg in configs.items():
                full_batches = (n_train // cfg.batch_size) * cfg.batch_size
                results[name]["epoch_images"] = full_batches if cfg.drop_last else n_train
            print(f"time to accuracy: presets {', '.join(args.preset)}, {args.seeds} seeds, data {env['data']} "
                  f"({n_train} training images)" + (f"; {len(order) - len(todo)} runs done earlier" if earlier else ""),
                  flush=True)
            print(f"hardware: {env['hardware']}; torch {env['torch']}; {env['date']}; command: {env['command']}",
                  flush=True)

            if todo and args.runner == "inprocess" and not args.no_warmup:
                t0 = time.perf_counter()
                first = todo[0][0]
                try:
                    _run_in_process(resolve_config(first, overrides=[*overrides, "epochs=1", "seed=12345",
                                                                     f"output_dir={out / 'warmup'}"]))
                except Preempted as e:
                    raise Stopped(str(e).split(";")[0]) from None
                except Stopped:
                    raise
                except Exception as e:
                    env["warmup_error"] = _reason(e)
                    if configs[first].compile and not isinstance(e, NonFiniteLoss):
                        state["compile_broken"] = f"the warm-up run: {_reason(e)}"
                    print(f"  warm-up run failed ({_reason(e)}); the runs go on"
                          + (" with compile=false" if state["compile_broken"] else ""), flush=True)
                env["warmup_seconds"] = time.perf_counter() - t0
                print(f"  warm-up run ({first}, 1 epoch, untimed): {env['warmup_seconds']:.1f} s", flush=True)

            last = {}  # preset -> (seconds, epochs) of its last run; the next run's duration is estimated from them
            for name, seed in todo:
                cfg = configs[name]
                ref = last.get(name) or (next(iter(last.values())) if last else None)
                guess = ref and ref[0] * cfg.epochs / ref[1]
                if args.budget and guess and time.perf_counter() - start + guess > args.budget:
                    print(f"  {name} seed {seed}: skipped, the budget of {args.budget:.0f} s would be exceeded "
                          f"(about {guess:.0f} s needed, {args.budget - (time.perf_counter() - start):.0f} s left)",
                          flush=True)
                    continue
                t0 = time.perf_counter()
                result = run_seed(name, seed, overrides, out, args, results[name]["epoch_images"], cfg.epochs, state)
                results[name]["seeds"] = sorted([*results[name]["seeds"], result], key=lambda r: r["seed"])
                last[name] = (time.perf_counter() - t0, cfg.epochs)
                write()
                if state["stopped"]:
                    print(f"  stopped by {state['stopped']}: no further runs", flush=True)
                    break
        except Stopped as e:
            print(f"  stopped by {e}: writing what was measured", flush=True)
            env["stopped"] = str(e)
        for name, cfg in configs.items():
            results[name]["table"] = report(name, results[name]["seeds"], args.targets, cfg.epochs)
        write(final=True)
        print("\n\n".join(results[n]["table"] for n in args.preset))
    return results


if __name__ == "__main__":
    main()
