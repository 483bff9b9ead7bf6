#!/usr/bin/env bash
# Issue 7's prepared GPU run, one call: the throughput table, time to accuracy of the fast presets (fast, fast94) over
# 3 seeds, and of model5 (the seed's recipe as the notebook ran it, 70 epochs, 1 seed), on CIFAR-10-JPEG; everything
# under $OUT (6 files: gpu_run.log, env.txt, throughput.json, tta_fast.json, tta_model5.json, summary.md).
#
# From a session whose task has a GPU (the device tool), in the repository root:
#   mkdir -p gpu_data && cp ../shared/data/cifar10-jpeg.tar.gz gpu_data/       # gpu_data/ is git-ignored
#   run(command="bash benchmarks/gpu_run.sh", carry=["gpu_data"], timeout_s=600)
# then copy summary.md's tables into BENCHMARKS.md (## Throughput, ## Time to accuracy) with the figures' hardware.
# The same flow on a CPU with tiny settings (extracts the archive, 2 seeds x 1 epoch on 200 images), with a Python like
# the GPU machine's (torch, timm, accelerate; resnet_lite NOT installed), as tests/test_gpu_run.py runs it:
#   PYTHON=/path/to/bare/python bash benchmarks/gpu_run.sh --dry-run      # ARCHIVE=... for another archive
#
# Budget: BUDGET seconds (default 560) for everything (the device tool stops a command at 600 s). Every stage runs
# under `timeout` with what is left, a stage that no longer fits is skipped, and each benchmark rewrites its JSON after
# every variant or seed, so a stage stopped early still leaves what it measured. Expected on an H100 (estimates, not
# measurements): setup 30 s, throughput 110 s (compiles lite_r4b2 only), fast + fast94 240 s, model5 the rest (~150 s;
# if it is stopped, the epochs it finished are reported as such).
set -uo pipefail
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
if (( DRY )); then
    OUT=${OUT:-/tmp/gpu_run_dry}
    BUDGET=${BUDGET:-1500}
fi
: "${OUT:?OUT must name the output folder (the device tool sets it)}"
BUDGET=${BUDGET:-560}
SCRATCH=${SCRATCH:-/tmp/resnet_lite_gpu_run}  # extracted data, its decoded cache, the benchmark runs
MODEL5_SHARE=${MODEL5_SHARE:-160}  # seconds kept back for model5 while the fast presets run
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

left() { echo $(( BUDGET - SECONDS )); }
stage() {  # stage NAME MAX_SECONDS KEEP_SECONDS COMMAND...: run under timeout min(MAX, left - KEEP), or skip
    local name=$1 max=$2 keep=$3
    shift 3
    local t=$(( $(left) - keep ))
    (( t > max )) && t=$max
    if (( t < 20 )); then
        echo "== $name: SKIPPED, $(left) s of the budget left"
        return 0
    fi
    echo "== $name: up to $t s (at ${SECONDS} s of $BUDGET)"
    timeout --kill-after=10 "$t" "$@"
    local rc=$?
    echo "== $name: exit $rc at ${SECONDS} s$( (( rc == 124 || rc == 137 )) && echo ' (stopped by its time limit)')"
}

# ---------------------------------------------------------------------------------------------- setup
echo "== setup at $(date -u +%FT%TZ), dry run: $DRY"
# the package from this checkout, not installed (the GPU machine has no network for pip): the checkout's root first on
# sys.path for every Python below (resnet_lite.shipped finds the presets in configs/ beside the source folder)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

ARCHIVE=${ARCHIVE:-gpu_data/cifar10-jpeg.tar.gz}
[[ -f "$ARCHIVE" ]] || ARCHIVE=../shared/data/cifar10-jpeg.tar.gz
if [[ ! -f "$ARCHIVE" ]]; then
    echo "no CIFAR-10-JPEG archive: copy ../shared/data/cifar10-jpeg.tar.gz into gpu_data/ and carry gpu_data"
    exit 2
fi
DATA_ROOT=$SCRATCH/c10jpeg
rm -rf "$DATA_ROOT" && mkdir -p "$DATA_ROOT" && tar -xzf "$ARCHIVE" -C "$DATA_ROOT" || exit 2
DATA="imagefolder:$DATA_ROOT/cifar10-jpeg"
CACHE=$SCRATCH/cache

{
    echo "date: $(date -u +%FT%TZ)"
    echo "archive: $ARCHIVE sha256 $(sha256sum "$ARCHIVE" | cut -d' ' -f1)"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --short 2>/dev/null | wc -l) changed files"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1 || echo "no nvidia-smi"
} > "$OUT/env.txt" 2>&1

# preflight, one Python (each start costs seconds): the versions into env.txt, the package imports here (this
# torch/timm/accelerate), and the data decodes once into the cache
"$PY" - "$DATA" "$CACHE" "$OUT/env.txt" <<'EOF' || { cat "$OUT/env.txt"; echo "preflight failed"; exit 3; }
import os, platform, sys, time
import accelerate, timm, torch
with open(sys.argv[3], "a") as env:
    print(f"python {platform.python_version()} torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version()}) timm {timm.__version__} accelerate {accelerate.__version__}", file=env)
    print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "| cpus:", os.cpu_count(),
          file=env)
import resnet_lite
with open(sys.argv[3], "a") as env:
    print("resnet_lite", resnet_lite.__version__, "from", resnet_lite.__file__, file=env)
from resnet_lite.config import resolve_config
from resnet_lite.data import load_dataset
from resnet_lite.ema import EMAConfig, build_ema, update_ema
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
update_ema(build_ema(EMAConfig(enabled=True), net), net, EMAConfig(enabled=True), 1)
for name in ("fast", "fast94", "model5"):
    resolve_config(name)
t = time.perf_counter()
ds = load_dataset(sys.argv[1], root=sys.argv[2])
print(f"preflight ok; {len(ds.train)} train / {len(ds.test)} test images decoded in {time.perf_counter() - t:.1f} s")
EOF
cat "$OUT/env.txt"

if (( DRY )); then
    TP_ARGS=(--quick --no-compile --variants lite_r4b2)
    TINY=(--subset 200 100 epochs=1 batch_size=64 eval_batch_size=100 compile=false)
    FAST_SEEDS=2; MODEL5_TIMEOUT_CAP=120
else
    TP_ARGS=(--compile-variants lite_r4b2 --steps 20 --warmup 5 --repeats 3)
    TINY=()
    FAST_SEEDS=3; MODEL5_TIMEOUT_CAP=100000
fi

# ---------------------------------------------------------------------------------------------- benchmarks
stage throughput 110 "$((MODEL5_SHARE + 120))" \
    "$PY" benchmarks/throughput.py "${TP_ARGS[@]}" --json "$OUT/throughput.json"

# the fast presets in one process: one warm-up run compiles for both; seeds that would overrun the budget are skipped
FAST_BUDGET=$(( $(left) - MODEL5_SHARE - 15 ))
stage "time to accuracy: fast, fast94" "$FAST_BUDGET" "$MODEL5_SHARE" \
    "$PY" benchmarks/time_to_accuracy.py --preset fast fast94 --seeds "$FAST_SEEDS" --data "$DATA" --data-dir "$CACHE" \
    --out "$SCRATCH/tta_fast" --budget "$(( FAST_BUDGET - 10 ))" --json "$OUT/tta_fast.json" "${TINY[@]}"

# model5 as its own process, stopped at the budget: its finished epochs still count
M5=$(( $(left) - 25 ))
(( M5 > MODEL5_TIMEOUT_CAP )) && M5=$MODEL5_TIMEOUT_CAP
stage "time to accuracy: model5" "$(( M5 + 20 ))" 5 \
    "$PY" benchmarks/time_to_accuracy.py --preset model5 --seeds 1 --runner subprocess --run-timeout "$M5" \
    --data "$DATA" --data-dir "$CACHE" --out "$SCRATCH/tta_model5" --json "$OUT/tta_model5.json" "${TINY[@]}"
tail -n 5 "$SCRATCH/tta_model5/model5-seed0.log" 2>/dev/null

# ---------------------------------------------------------------------------------------------- summary
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
parts = ["# GPU run (benchmarks/gpu_run.sh)", "", "```", (out / "env.txt").read_text().strip(), "```", ""]
for name, title in (("throughput.json", "Throughput"), ("tta_fast.json", "Time to accuracy: fast presets"),
                    ("tta_model5.json", "Time to accuracy: model5")):
    path = out / name
    if not path.exists():
        parts += [f"## {title}", "", "not run (skipped or failed: see gpu_run.log)", ""]
        continue
    data = json.loads(path.read_text())
    env = data["env"]
    parts += [f"## {title}", "", f"{env['hardware']}; torch {env['torch']}; {env['date']}; `{env['command']}`", ""]
    if "table" in data:
        parts += [data["table"], ""]
    elif name == "throughput.json":
        parts += ["(stopped early; variants measured: " + ", ".join(sorted({r["variant"] for r in data["results"]})) + ")", ""]
    else:  # stopped mid-way: the seeds finished so far
        for preset, res in data["presets"].items():
            for s in res["seeds"]:
                parts.append(f"- {preset} seed {s['seed']}: {len(s['rows'])}/{res['epochs']} epochs, final test acc "
                             f"{s['final_test_acc']}, train {s['train_seconds']:.2f} s, reached {s['reached']}")
        parts.append("")
# issue 11's targets, against model5's final accuracy on the same data (fewer than its 70 epochs if it was stopped)
parts += ["## Targets", ""]
fast_path, m5_path = out / "tta_fast.json", out / "tta_model5.json"
base_seeds = json.loads(m5_path.read_text())["presets"]["model5"]["seeds"] if m5_path.exists() else []
if not fast_path.exists() or not base_seeds or base_seeds[0]["final_test_acc"] is None:
    parts += ["not judged: the fast presets or model5 did not run (see gpu_run.log)", ""]
else:
    base = base_seeds[0]
    parts += [f"model5 (seed 0, {len(base['rows'])} epochs{'' if base['complete'] else ', stopped by the budget'}): "
              f"final test acc {100 * base['final_test_acc']:.2f}%, train {base['train_seconds']:.1f} s", "",
              "| preset | target | seeds | mean final acc % | mean train s (steady) | met |", "|---|---|---|---|---|---|"]
    presets = json.loads(fast_path.read_text())["presets"]
    for preset, margin, limit in (("fast", 0.0, 10.0), ("fast94", 0.025, 40.0)):
        seeds = [s for s in presets.get(preset, {}).get("seeds", []) if s["final_test_acc"] is not None]
        if not seeds:
            parts.append(f"| {preset} | - | 0 | - | - | not run |")
            continue
        acc = sum(s["final_test_acc"] for s in seeds) / len(seeds)
        secs = sum(s["steady_train_seconds"] for s in seeds) / len(seeds)
        met = acc >= base["final_test_acc"] + margin and secs <= limit
        parts.append(f"| {preset} | >= model5 + {100 * margin:.1f} pts in <= {limit:.0f} s | {len(seeds)} | "
                     f"{100 * acc:.2f} | {secs:.2f} | {'yes' if met else 'NO'} |")
    parts.append("")
(out / "summary.md").write_text("\n".join(parts))
print("\n".join(parts))
EOF
echo "== done at ${SECONDS} s of $BUDGET"
