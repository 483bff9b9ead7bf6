"""benchmarks/gpu_run.sh's bookkeeping, in plain Python (no torch: each call costs milliseconds, not seconds).

    python benchmarks/gpu_summary.py done model5 --results DIR         # exit 0 when that stage has nothing left to do
    python benchmarks/gpu_summary.py weights --results DIR --runs DIR   # the best fast94 seed's weights into DIR
    python benchmarks/gpu_summary.py summary --results DIR --out summary.md

The results folder holds what every stage wrote (throughput.json, tta_fast.json, tta_model5.json), the stage records
gpu_run.sh appends (stages.jsonl), env.txt, and the best fast94 seed's weights with their description
(lite_r4b2.fast94.safetensors, lite_r4b2.fast94.json). `summary` can also run here, on the CPU, over the results of
two calls copied into one folder.

Stages: throughput (the eager settings of lite_r4b2), fast (fast and fast94 over SEEDS seeds), compile (the compiled
setting of the throughput table) and model5 (70 epochs, one seed). The targets (issue 11) are judged only against a
model5 that finished all its epochs.
"""
import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

STAGES = ("throughput", "fast", "compile", "model5")
VARIANT = "lite_r4b2"
EAGER = ("fp32 eager", "bf16", "bf16 + channels_last")
COMPILED = "bf16 + channels_last + compile"
FAST_PRESETS = ("fast", "fast94")
# issue 11: (preset, points above model5's final accuracy, seconds of training), mean of 3 seeds
TARGETS = (("fast", 0.0, 10.0), ("fast94", 0.025, 40.0))
THROUGHPUT_TARGET = 100_000  # train images/s of lite_r4b2 in bf16 + channels_last + compile (issue 21)
WEIGHTS = f"{VARIANT}.fast94.safetensors"
WEIGHTS_META = f"{VARIANT}.fast94.json"


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_state(stage: str, results: Path, seeds: int = 3) -> tuple[bool, str]:
    """(nothing left to do, a one-line account) of `stage` from the results so far."""
    if stage in ("throughput", "compile"):
        data = _load(results / "throughput.json")
        rows = {r["name"]: r for r in (data or {}).get("results", []) if r["variant"] == VARIANT}
        want = EAGER if stage == "throughput" else (COMPILED,)
        # a failed compile counts as done: it would fail again, and it is recorded; eager failures are retried
        have = [n for n in want if n in rows and ("error" not in rows[n] or stage == "compile")]
        failed = [n for n in have if "error" in rows[n]]
        text = f"{len(have)}/{len(want)} settings measured" + (f" ({', '.join(failed)} failed)" if failed else "")
        return len(have) == len(want), text
    if stage == "fast":
        data = _load(results / "tta_fast.json")
        presets = (data or {}).get("presets", {})
        seeds = (data or {}).get("env", {}).get("seeds_requested", seeds)
        counts, done = [], True
        for name in FAST_PRESETS:
            seeds_ = presets.get(name, {}).get("seeds", [])
            finished = [s for s in seeds_ if s["complete"] or s["error"]]
            failed = sum(bool(s["error"]) for s in finished)
            counts.append(f"{name} {len(finished)}/{seeds} seeds" + (f" ({failed} failed)" if failed else ""))
            done = done and len(finished) >= seeds
        return done, ", ".join(counts)
    if stage == "model5":
        data = _load(results / "tta_model5.json")
        res = (data or {}).get("presets", {}).get("model5")
        if not res or not res["seeds"]:
            return False, "not started"
        s = res["seeds"][0]
        text = f"{s['epochs_done']}/{res['epochs']} epochs" + (f", error: {s['error']}" if s["error"] else "") + (
            ", resumed from a checkpoint" if s.get("resumed") else "")
        return bool(s["complete"]), text
    raise SystemExit(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")


def best_fast94(results: Path):
    """The complete fast94 seed with the highest final test accuracy, and the data's description; None if none."""
    data = _load(results / "tta_fast.json")
    seeds = [s for s in (data or {}).get("presets", {}).get("fast94", {}).get("seeds", []) if s["complete"]]
    if not seeds:
        return None
    return max(seeds, key=lambda s: s["final_test_acc"]), data


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_weights(results: Path, runs: Path, commit: str, archive: str, archive_sha256: str) -> str:
    """Copy the best fast94 seed's model_last.safetensors (the evaluated weights: EMA) into `results`, with a JSON that
    says what they are and what they measured; what benchmarks/publish_weights.py reads."""
    found = best_fast94(results)
    if found is None:
        return "no complete fast94 seed: no weights"
    seed, data = found
    source = runs / f"fast94-seed{seed['seed']}" / "model_last.safetensors"
    if not source.is_file():
        return f"fast94 seed {seed['seed']}: {source} is missing"
    meta_path = results / WEIGHTS_META
    old = _load(meta_path)
    if (old and old.get("seed") == seed["seed"] and old.get("test_acc") == seed["final_test_acc"]
            and (results / WEIGHTS).is_file()):
        return f"fast94 seed {seed['seed']} (final test acc {100 * seed['final_test_acc']:.2f}%): already exported"
    shutil.copyfile(source, results / WEIGHTS)
    config = source.parent / "config.yaml"
    summary = seed.get("summary") or {}
    env = data["env"]
    meta = {
        "model": VARIANT, "preset": "fast94", "seed": seed["seed"], "epochs": seed["epochs_done"],
        "test_acc": seed["final_test_acc"], "test_images": summary.get("eval_samples"), "tta": summary.get("tta"),
        "ema": summary.get("ema"), "mixed_precision": summary.get("mixed_precision"),
        "train_seconds": seed["train_seconds"], "steady_train_seconds": seed["steady_train_seconds"],
        "seeds_compared": len(data["presets"]["fast94"]["seeds"]), "selected_by": "highest final test accuracy",
        "data": env["data"], "train_images": env.get("train_images"), "archive": archive,
        "archive_sha256": archive_sha256, "hardware": env["hardware"], "torch": env["torch"], "date": env["date"],
        "commit": commit, "overrides": env["overrides"], "compile": seed.get("compile"),
        "config_yaml": config.read_text() if config.is_file() else None, "sha256": _sha256(results / WEIGHTS),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return f"fast94 seed {seed['seed']} (final test acc {100 * seed['final_test_acc']:.2f}%): exported {WEIGHTS}"


# ---------------------------------------------------------------------------------------------- summary.md


def _env_line(data) -> str:
    env = data["env"]
    return f"{env['hardware']}; torch {env['torch']}; {env['date']}; `{env['command']}`"


def _stages(results: Path, seeds: int) -> list[str]:
    lines = ["## Stages", "", "| call | stage | status | seconds | time limit s | detail |",
             "|---|---|---|---|---|---|"]
    records = []
    path = results / "stages.jsonl"
    if path.is_file():
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in records:
        lines.append(f"| {r.get('call', '')} | {r['stage']} | {r['status']} | {r.get('seconds', '')} | "
                     f"{r.get('limit', '')} | {str(r.get('detail', '')).replace('|', '/')} |")
    lines.append("")
    open_ = []
    for stage in STAGES:
        done, text = stage_state(stage, results, seeds)
        lines.append(f"- {stage}: {'complete' if done else 'NOT complete'} ({text})")
        if not done:
            open_.append(stage)
    if open_:
        lines += ["", f"Not complete: {', '.join(open_)}. A second call finishes them (on a warm machine it continues "
                      f"model5's checkpoint and skips what is done): `bash benchmarks/gpu_run.sh --continue --stage "
                      f"{','.join(sorted(open_, key=lambda s: ('model5', 'fast', 'compile', 'throughput').index(s)))}`"]
    return lines + [""]


def _throughput(results: Path) -> list[str]:
    data = _load(results / "throughput.json")
    lines = ["## Throughput", ""]
    if not data:
        return lines + ["not run (skipped or failed: see the stages above and gpu_run.log)", ""]
    envs = data.get("envs", [data["env"]])
    lines += [f"{_env_line({'env': e})}" for e in envs] + [""]
    lines += [data.get("table", ""), ""]
    rows = {r["name"]: r for r in data["results"] if r["variant"] == VARIANT}
    best = rows.get(COMPILED)
    if best and "error" not in best:
        rate = best["aug_images_per_second"]
        lines.append(f"- Target (>= {THROUGHPUT_TARGET:,} train images/s in {COMPILED}, the +aug column: the step as "
                     f"the trainer runs it): {rate:,.0f} -> {'met' if rate >= THROUGHPUT_TARGET else 'NOT met'} "
                     f"(step without augmentation: {best['step_images_per_second']:,.0f}).")
    elif best:
        lines.append(f"- {COMPILED}: failed ({best['error']}); the target is not judged.")
    else:
        lines.append(f"- {COMPILED}: not measured; the target is not judged.")
    for name, r in rows.items():
        if r.get("gpu_busy_fraction"):
            busy = r["gpu_busy_fraction"]
            verdict = ("launch-bound: the GPU waits for the host to queue work" if busy < 0.7 else
                       "partly launch-bound" if busy < 0.9 else "kernel-bound: the GPU is kept busy")
            lines.append(f"- {name}: kernels run {100 * busy:.0f}% of the step time ({verdict}).")
    if len(envs) > 1:
        lines.append("- The rows were timed in more than one process (the eager settings first, the compiled one "
                     "later): the ratios compare across them.")
    return lines + [""]


def _seed_lines(res: dict) -> list[str]:
    out = []
    for s in res["seeds"]:
        acc = f"{100 * s['final_test_acc']:.2f}%" if s["final_test_acc"] is not None else "-"
        note = f" ({s['error']})" if s.get("error") else (f" (stopped by {s['stopped']})" if s.get("stopped") else "")
        out.append(f"- seed {s['seed']}: {s['epochs_done']}/{res['epochs']} epochs, final test acc {acc}, train "
                   f"{s['train_seconds']:.2f} s (steady {s['steady_train_seconds']:.2f} s){note}")
    return out


def _tta(results: Path, name: str, title: str) -> list[str]:
    data = _load(results / name)
    lines = [f"## {title}", ""]
    if not data:
        return lines + ["not run (skipped or failed: see the stages above and gpu_run.log)", ""]
    lines += [_env_line(data), ""]
    if data["env"].get("warmup_error"):
        lines += [f"- warm-up run failed: {data['env']['warmup_error']}", ""]
    for preset, res in data["presets"].items():
        if res.get("table"):
            lines += [res["table"], ""]
        else:  # a JSON written mid-way: the seeds so far
            lines += [f"**{preset}** ({res['epochs']} epochs)", "", *_seed_lines(res), ""]
    return lines


def _targets(results: Path) -> list[str]:
    lines = ["## Targets", ""]
    fast, m5 = _load(results / "tta_fast.json"), _load(results / "tta_model5.json")
    base_res = (m5 or {}).get("presets", {}).get("model5")
    base = base_res["seeds"][0] if base_res and base_res["seeds"] else None
    if base is None:
        return lines + ["not judged: model5 did not run (see the stages above)", ""]
    if not base["complete"]:
        return lines + [f"not judged: model5 finished {base['epochs_done']} of its {base_res['epochs']} epochs, and "
                        f"an unfinished model5 (its schedule cut short) is no baseline. Finish it with `bash "
                        f"benchmarks/gpu_run.sh --continue --stage model5`.", ""]
    resumed = ", resumed from a checkpoint" if base.get("resumed") else ""
    lines += [f"model5 (seed 0, all {base['epochs_done']} epochs{resumed}):"
              f" final test acc {100 * base['final_test_acc']:.2f}%, train {base['train_seconds']:.1f} s", ""]
    if not fast:
        return lines + ["fast presets: not run", ""]
    lines += ["| preset | target | complete seeds | mean final acc % | mean train s (steady) | met |",
              "|---|---|---|---|---|---|"]
    for preset, margin, limit in TARGETS:
        seeds = [s for s in fast["presets"].get(preset, {}).get("seeds", []) if s["complete"]]
        if not seeds:
            lines.append(f"| {preset} | >= model5 + {100 * margin:.1f} pts in <= {limit:.0f} s | 0 | - | - | not run |")
            continue
        acc = sum(s["final_test_acc"] for s in seeds) / len(seeds)
        secs = sum(s["steady_train_seconds"] for s in seeds) / len(seeds)
        met = acc >= base["final_test_acc"] + margin and secs <= limit
        verdict = ("yes" if met else "NO") + ("" if len(seeds) >= 3 else f" (only {len(seeds)} of 3 seeds)")
        lines.append(f"| {preset} | >= model5 + {100 * margin:.1f} pts in <= {limit:.0f} s | {len(seeds)} | "
                     f"{100 * acc:.2f} | {secs:.2f} | {verdict} |")
    return lines + ["", "A missed target is tuned on the hold-out split (data.holdout) in the next GPU run, not on the "
                        "test set.", ""]


def _weights(results: Path) -> list[str]:
    meta = _load(results / WEIGHTS_META)
    lines = ["## Weights", ""]
    if not meta or not (results / WEIGHTS).is_file():
        return lines + ["none: no complete fast94 seed", ""]
    return lines + [f"{WEIGHTS}: fast94 seed {meta['seed']} ({meta['selected_by']} of {meta['seeds_compared']}), "
                    f"final test acc {100 * meta['test_acc']:.2f}% (TTA {meta['tta']}, {meta['mixed_precision']}), "
                    f"sha256 {meta['sha256'][:16]}...; publish: `python benchmarks/publish_weights.py {WEIGHTS} "
                    f"--data imagefolder:PATH/cifar10-jpeg` (see its docstring)", ""]


def write_summary(results: Path, out: Path, seeds: int = 3) -> str:
    env = results / "env.txt"
    parts = ["# GPU run (benchmarks/gpu_run.sh)", "", "```",
             env.read_text().strip() if env.is_file() else "(no env.txt)", "```", ""]
    parts += _stages(results, seeds)
    parts += _throughput(results)
    parts += _tta(results, "tta_fast.json", "Time to accuracy: fast presets")
    parts += _tta(results, "tta_model5.json", "Time to accuracy: model5")
    parts += _targets(results)
    parts += _weights(results)
    text = "\n".join(parts)
    out.write_text(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("done", help="exit 0 when STAGE has nothing left to do; print its state")
    d.add_argument("stage", choices=STAGES)
    d.add_argument("--seeds", type=int, default=3)
    w = sub.add_parser("weights", help="export the best complete fast94 seed's weights into --results")
    w.add_argument("--runs", type=Path, required=True, help="the fast stage's run directories (--out of the benchmark)")
    w.add_argument("--commit", default="unknown")
    w.add_argument("--archive", default="")
    w.add_argument("--archive-sha256", default="")
    s = sub.add_parser("summary", help="write summary.md from the results")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seeds", type=int, default=3, help="seeds per fast preset the plan asks for")
    for q in (d, w, s):
        q.add_argument("--results", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "done":
        done, text = stage_state(args.stage, args.results, args.seeds)
        print(text)
        return 0 if done else 1
    if args.command == "weights":
        print(export_weights(args.results, args.runs, args.commit, args.archive, args.archive_sha256))
        return 0
    print(write_summary(args.results, args.out, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
