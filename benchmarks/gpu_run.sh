#!/usr/bin/env bash
# The prepared GPU run (issues 7, 11, 21): on CIFAR-10-JPEG, the throughput table of lite_r4b2 (fp32, bf16,
# + channels_last, + compile), time to accuracy of the fast presets (fast, fast94: 3 seeds each) and of model5 (the
# report's recipe, all 70 epochs, 1 seed), the targets judged, and the best fast94 seed's weights for publishing.
#
# ------------------------------------------------------------------------------------------ THE DEVICE CALLS, IN ORDER
# A session whose task has a GPU has 15 minutes of device time in all (the machine's start, 1-2 min, and idle time
# count; 10 min at most per command). Make exactly these calls, from the repository root:
#   0. here, first:   mkdir -p gpu_data && cp ../shared/data/cifar10-jpeg.tar.gz gpu_data/   # git-ignored, 19 MB
#   1. run(command="bash benchmarks/gpu_run.sh", carry=["gpu_data"], timeout_s=590)
#        BUDGET 560 s: setup, throughput (eager), fast + fast94, compile, then model5 with what is left (at least
#        MODEL5_SHARE=220 s are kept for it), stopped at the budget with a checkpoint. Its $OUT comes back (7 files:
#        gpu_run.log, summary.md, throughput.json, tta_fast.json, tta_model5.json, lite_r4b2.fast94.safetensors and
#        lite_r4b2.fast94.json).
#   2. AT ONCE, in the turn that reads call 1's reply (a machine stays warm 30 s; a warm one keeps /tmp, so model5
#      continues its checkpoint and the compiled kernels are cached), with B = that reply's lease.budget_left_s - 60
#      (at most 560; skip this call if B < 90); in the same turn, beside it, copy call 1's files_at to
#      ../gpu_run_call1 (cp -r), since a later call's files may replace them:
#      run(command="BUDGET=<B> bash benchmarks/gpu_run.sh --continue --stage model5,fast,compile,throughput",
#          carry=["gpu_data"], timeout_s=<B + 30>)
#        Stages already complete are skipped; model5 goes first and keeps nothing back for the others (they get what
#        it leaves). If the machine was not warm, model5 starts again.
#        Its $OUT holds everything of both calls (the results live in /tmp on the machine) and summary.md over both.
#   3. give_back()   (idle time counts).
# Then here: summary.md's tables into BENCHMARKS.md (## Throughput, ## Time to accuracy) with the GPU, torch, date and
# command; the weights into the package: python benchmarks/publish_weights.py (see its docstring).
# If calls were lost, `python benchmarks/gpu_summary.py summary --results DIR --out DIR/summary.md` rebuilds the
# summary here from the JSONs; a later session finishes what summary.md lists as not complete with call 2.
#
# ------------------------------------------------------------------------------------------ WHAT IT DOES
# Stages (`--stage a,b` or STAGES=a,b: these, in this order; default throughput,fast,compile,model5):
#   throughput  benchmarks/throughput.py, the eager settings of lite_r4b2 (cheap: no compile)
#   fast        benchmarks/time_to_accuracy.py fast + fast94 in one process, seed by seed (fast 0, fast94 0, fast 1..):
#               one warm-up run pays the cold compile for all; then the best complete fast94 seed's weights
#   compile     benchmarks/throughput.py, the compiled setting (after `fast`, whose compile cache it reuses)
#   model5      the report's recipe as a separate training process: its optimizer, schedule, batch 128 and augmentation
#               unchanged, with the GPU-side defaults bf16 (auto) and channels_last (MODEL5_SET adds overrides, e.g.
#               compile=true); stopped at its time limit with a checkpoint, continued by a --continue call
# Every stage runs under `timeout` with min(its cap, what is left - the shares kept for the later stages); one that
# no longer fits is skipped, and every stage's results are rewritten as it goes (after every seed, every round), so a
# stage cut short still leaves what it measured. After every stage the results are copied to $OUT and summary.md is
# rewritten: its "## Stages" says what ran, what was cut or skipped, and what a second call must finish. The targets
# are never judged against an unfinished model5. A failed compile or a non-finite loss ends one run, not the stage.
# --continue keeps the results of an earlier call on this machine (SCRATCH) and skips what is complete; without it the
# results start afresh (the extracted data, its decoded cache and the compile cache are kept).
# Why these numbers: nothing has run on a GPU yet, so the plan assumes little. ESTIMATES, not measurements: setup
# 20-40 s (the cold decode of the 60k JPEGs took 22 s on this project's 2-core VM), throughput 20-40 s, fast 320-400 s
# (a cold compile of 60-120 s, then fast 3 x ~37 s (batch 256, 15 epochs, 2,925 steps) and fast94 3 x ~50 s with
# per-epoch evaluations), compile 20-60 s, model5 150-250 s (27,370 steps at batch 128, eager: launch-bound). So one
# call of 560 s holds it all only if the GPU is fast; the second call gets the rest of the 15 minutes, model5 first.
# Every figure stays partial-safe.
#
# The same flow on a CPU with tiny settings, with a Python like the GPU machine's (torch, timm, accelerate; resnet_lite
# and wandb NOT installed), as tests/integration/test_gpu_run.py runs it:
#   PYTHON=/path/to/bare/python bash benchmarks/gpu_run.sh --dry-run          # ARCHIVE=... for another archive
#   BUDGET=60 PYTHON=... bash benchmarks/gpu_run.sh --dry-run                 # too small: stages skipped or cut
#   PYTHON=... bash benchmarks/gpu_run.sh --dry-run --continue --stage model5  # a second call: finishes model5
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
DRY=0 CONTINUE=0 STAGE_ARG=""
while (( $# )); do
    case $1 in
        --dry-run) DRY=1 ;;
        --continue) CONTINUE=1 ;;
        --stage|--stages) STAGE_ARG+="${STAGE_ARG:+,}${2:?--stage needs a list}"; shift ;;
        --stage=*|--stages=*) STAGE_ARG+="${STAGE_ARG:+,}${1#*=}" ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument $1 (see --help)"; exit 2 ;;
    esac
    shift
done
IFS=, read -r -a PLAN <<< "${STAGE_ARG:-${STAGES:-throughput,fast,compile,model5}}"
for s in "${PLAN[@]}"; do
    [[ $s =~ ^(throughput|fast|compile|model5)$ ]] || { echo "unknown stage $s: throughput, fast, compile, model5"; exit 2; }
done
PY=${PYTHON:-python3}
FAST_SEEDS=3
(( DRY )) && FAST_SEEDS=2
if (( DRY )); then
    OUT=${OUT:-/tmp/gpu_run_dry}
    BUDGET=${BUDGET:-1500}
    SCRATCH=${SCRATCH:-/tmp/resnet_lite_gpu_run_dry}
fi
: "${OUT:?OUT must name the output folder (the device tool sets it)}"
BUDGET=${BUDGET:-560}
SCRATCH=${SCRATCH:-/tmp/resnet_lite_gpu_run}  # extracted data, its decoded cache, the runs, the results of every call
RESULTS=$SCRATCH/results
MODEL5_SHARE=${MODEL5_SHARE:-220}  # seconds kept for model5 while the stages before it run
END=15                             # seconds kept for the summary at the end
mkdir -p "$OUT" "$SCRATCH"
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TORCH_LOGS=${TORCH_LOGS-recompiles,graph_breaks}  # the log shows whether the seeds reuse the compiled graphs
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$SCRATCH/inductor-cache}  # kept for a --continue call
CALL=$(date -u +%H:%M:%S)

left() { echo $(( BUDGET - SECONDS )); }
record() {  # record STAGE STATUS SECONDS LIMIT DETAIL: one line of stages.jsonl (summary.md's "## Stages")
    "$PY" -c 'import json, sys; c, s, st, sec, lim, d = sys.argv[1:]; print(json.dumps(dict(call=c, stage=s, status=st,
seconds=int(sec) if sec else "", limit=int(lim) if lim else "", detail=d)))' "$CALL" "$@" >> "$RESULTS/stages.jsonl"
}
sync_out() {  # the results so far into $OUT (what comes back even if a later stage is cut), and summary.md
    local f
    for f in throughput.json tta_fast.json tta_model5.json lite_r4b2.fast94.safetensors lite_r4b2.fast94.json; do
        [[ -f $RESULTS/$f ]] && cp "$RESULTS/$f" "$OUT/$f"
    done
    "$PY" benchmarks/gpu_summary.py summary --results "$RESULTS" --out "$OUT/summary.md" --seeds "$FAST_SEEDS" > /dev/null \
        || echo "summary.md could not be written"
}

# ---------------------------------------------------------------------------------------------- setup
echo "== setup at $(date -u +%FT%TZ) (call $CALL): dry run $DRY, continue $CONTINUE, budget $BUDGET s, stages ${PLAN[*]}"
# the package from this checkout, not installed (the GPU machine has no network for pip): the checkout's root first on
# sys.path for every Python below (resnet_lite.shipped finds the presets in configs/ beside the source folder)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if (( ! CONTINUE )); then  # a first call: no results of an earlier one count
    rm -rf "$RESULTS" "$SCRATCH/tta_fast" "$SCRATCH/tta_model5"
fi
mkdir -p "$RESULTS"

ARCHIVE=${ARCHIVE:-gpu_data/cifar10-jpeg.tar.gz}
[[ -f "$ARCHIVE" ]] || ARCHIVE=../shared/data/cifar10-jpeg.tar.gz
if [[ ! -f "$ARCHIVE" ]]; then
    echo "no CIFAR-10-JPEG archive: copy ../shared/data/cifar10-jpeg.tar.gz into gpu_data/ and carry gpu_data"
    exit 2
fi
ARCHIVE_SHA=$(sha256sum "$ARCHIVE" | cut -d' ' -f1)
DATA_ROOT=$SCRATCH/c10jpeg
if [[ "$(cat "$DATA_ROOT/.sha256" 2>/dev/null)" != "$ARCHIVE_SHA" ]]; then  # extracted once per machine
    rm -rf "$DATA_ROOT" && mkdir -p "$DATA_ROOT" && tar -xzf "$ARCHIVE" -C "$DATA_ROOT" || exit 2
    echo "$ARCHIVE_SHA" > "$DATA_ROOT/.sha256"
fi
DATA="imagefolder:$DATA_ROOT/cifar10-jpeg"
CACHE=$SCRATCH/cache
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)

{
    echo "call $CALL: $(date -u +%FT%TZ), stages ${PLAN[*]}, budget $BUDGET s, continue $CONTINUE"
    echo "archive: $ARCHIVE sha256 $ARCHIVE_SHA"
    echo "git: $COMMIT $(git status --short 2>/dev/null | wc -l) changed files"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1
    else
        echo "no nvidia-smi"
    fi
} > "$RESULTS/env.txt" 2>&1

# preflight, one Python under a timeout (each start costs seconds): the versions into env.txt, the package imports
# here (this torch/timm/accelerate), and the data decodes once into the cache
timeout --kill-after=10 300 "$PY" - "$DATA" "$CACHE" "$RESULTS/env.txt" <<'EOF'
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
from resnet_lite.training.ema import EMAConfig, build_ema, update_ema
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
update_ema(build_ema(EMAConfig(enabled=True), net), net, EMAConfig(enabled=True), 1)
for name in ("fast", "fast94", "model5"):
    resolve_config(name)
t = time.perf_counter()
ds = load_dataset(sys.argv[1], root=sys.argv[2])
print(f"preflight ok; {len(ds.train)} train / {len(ds.test)} test images decoded in {time.perf_counter() - t:.1f} s")
EOF
rc=$?
cat "$RESULTS/env.txt"
if (( rc != 0 )); then
    echo "preflight failed (exit $rc$( (( rc == 124 || rc == 137 )) && echo ': stopped by its time limit'))"
    record setup failed "$SECONDS" 300 "preflight exit $rc"
    sync_out
    exit 3
fi
echo "== setup done at ${SECONDS} s"

if (( DRY )); then  # tiny settings: every stage's path, in minutes on a CPU
    TP_ARGS=(--quick --compile-backend eager)
    TINY=(--subset 200 100 epochs=1 batch_size=64 eval_batch_size=100 compile_backend=eager)
    M5_EXTRA=("epochs=${DRY_MODEL5_EPOCHS:-2}")
    M5_MARGIN=25
    declare -A MIN=([throughput]=15 [fast]=15 [compile]=15 [model5]=15)
    declare -A CAP=([throughput]=300 [fast]=600 [compile]=300 [model5]=100000)
    declare -A SHARE=([throughput]=20 [fast]=60 [compile]=15 [model5]=40)
else
    TP_ARGS=(--steps 20 --warmup 5 --repeats 3)
    TINY=()
    M5_EXTRA=()
    M5_MARGIN=45  # model5's training process is stopped this long before its stage's limit: startup, save, results
    # MIN: below this a stage is skipped; CAP: the most it may take; SHARE: kept for it while earlier stages run
    declare -A MIN=([throughput]=30 [fast]=60 [compile]=40 [model5]=60)
    declare -A CAP=([throughput]=120 [fast]=420 [compile]=150 [model5]=100000)
    declare -A SHARE=([throughput]=30 [fast]=150 [compile]=40 [model5]=$MODEL5_SHARE)
fi

run_stage() {  # run_stage INDEX: the stage PLAN[INDEX] under timeout, or skipped; recorded either way
    local i=$1 later=0 j t rc start status detail
    STAGE=${PLAN[$i]}
    if detail=$("$PY" benchmarks/gpu_summary.py done "$STAGE" --results "$RESULTS" --seeds "$FAST_SEEDS"); then
        echo "== $STAGE: complete already ($detail)"
        record "$STAGE" "complete already" "" "" "$detail"
        return 0
    fi
    if [[ $STAGE != model5 ]]; then  # model5, the baseline every target needs, keeps nothing back for later stages
        for (( j = i + 1; j < ${#PLAN[@]}; j++ )); do later=$(( later + SHARE[${PLAN[$j]}] )); done
    fi
    t=$(( $(left) - END - later ))
    (( t > CAP[$STAGE] )) && t=${CAP[$STAGE]}
    if (( t < MIN[$STAGE] )); then
        echo "== $STAGE: SKIPPED, $(left) s of the budget left, $later s kept for later stages, it needs ${MIN[$STAGE]} s"
        record "$STAGE" skipped "" "" "$(left) s left, $later s kept for later stages; needs ${MIN[$STAGE]} s"
        sync_out
        return 0
    fi
    echo "== $STAGE: up to $t s (at ${SECONDS} s of $BUDGET)"
    start=$SECONDS
    case $STAGE in
        throughput|compile)
            local settings=eager
            [[ $STAGE == compile ]] && settings=compile
            timeout --kill-after=20 "$t" "$PY" benchmarks/throughput.py --variants lite_r4b2 --settings "$settings" \
                "${TP_ARGS[@]}" --json "$RESULTS/throughput.json" --append
            rc=$? ;;
        fast)  # seeds that would overrun the stage are skipped; --skip-done: a --continue call runs only the others
            timeout --kill-after=20 "$t" "$PY" benchmarks/time_to_accuracy.py --preset fast fast94 --interleave \
                --seeds "$FAST_SEEDS" --data "$DATA" --data-dir "$CACHE" --out "$SCRATCH/tta_fast" \
                --budget "$(( t - 15 ))" --json "$RESULTS/tta_fast.json" --skip-done "${TINY[@]}"
            rc=$?
            "$PY" benchmarks/gpu_summary.py weights --results "$RESULTS" --runs "$SCRATCH/tta_fast" --commit "$COMMIT" \
                --archive "$(basename "$ARCHIVE")" --archive-sha256 "$ARCHIVE_SHA" ;;
        model5)  # a process of its own, stopped (SIGTERM: it saves a checkpoint) M5_MARGIN s before the stage's limit
            timeout --kill-after=20 "$t" "$PY" benchmarks/time_to_accuracy.py --preset model5 --seeds 1 \
                --runner subprocess --resume --run-timeout "$(( t - M5_MARGIN > 10 ? t - M5_MARGIN : 10 ))" --data "$DATA" \
                --data-dir "$CACHE" --out "$SCRATCH/tta_model5" --json "$RESULTS/tta_model5.json" "${TINY[@]}" \
                channels_last=true "${M5_EXTRA[@]}" ${MODEL5_SET:-}
            rc=$?
            if ! "$PY" benchmarks/gpu_summary.py done model5 --results "$RESULTS" > /dev/null; then
                echo "-- model5 is not complete; the last 40 lines of its training log:"
                tail -n 40 "$SCRATCH/tta_model5/model5-seed0.log" 2>/dev/null
            fi ;;
    esac
    if detail=$("$PY" benchmarks/gpu_summary.py done "$STAGE" --results "$RESULTS" --seeds "$FAST_SEEDS"); then
        status=complete
    elif (( rc == 124 || rc == 137 )); then
        status="cut: stopped by its time limit"
    elif (( rc != 0 )); then
        status="failed: exit $rc"
    else
        status="cut: not complete within its time"
    fi
    echo "== $STAGE: $status, exit $rc at ${SECONDS} s ($detail)"
    record "$STAGE" "$status" "$(( SECONDS - start ))" "$t" "$detail"
    sync_out
}

for (( i = 0; i < ${#PLAN[@]}; i++ )); do
    run_stage "$i"
done

# ---------------------------------------------------------------------------------------------- summary
sync_out
cp "$RESULTS/env.txt" "$SCRATCH/env-$CALL.txt" 2>/dev/null
cat "$OUT/summary.md"
echo "== done at ${SECONDS} s of $BUDGET"
