#!/usr/bin/env bash
# Build docker/Dockerfile with a real engine and use the image as a user would. CI runs this from .ci/run;
# by hand, as root, from anywhere: `bash docker/test_image.sh`.
#
# The engine is Debian's rootful podman (with runc; crun refuses this machine's hybrid cgroups) and
# podman-compose. No registry is reachable, so the official PyTorch base is stood in for by a local image:
# Debian bookworm (Python 3.11, as in the official image) from debootstrap, a venv with the torch and
# torchvision that .ci/constraints.txt pins (pip's own resolution on this machine, the CUDA build with its
# nvidia wheels) and, for the build's HTTPS through this network's proxy, the host's CA bundle. That base is
# built once per machine and kept, keyed by a hash of its recipe, pins and CA bundle, in a podman storage of
# this script's own (RESNET_LITE_IMAGE_CACHE, default /var/cache/resnet_lite-image-test), so nothing here
# touches other images; the shipped Dockerfile stays on the official base and never sees the CA bundle.
#
# Then, with the bind mounts owned by a non-root host user (resnet-ci, created if missing) and the
# container run as that user (--user UID:GID, as launch/README.md tells users to):
#   - `accelerate launch -m resnet_lite.train --data synthetic` for an epoch, files in runs/ owned by the user;
#   - `evaluate` and `export` (ONNX: the image has the export extra) on that run;
#   - `docker stop`'s SIGTERM through the entrypoint: the trainer checkpoints, and --resume continues;
#   - compose.yaml's service with podman-compose, on a tiny CIFAR-10 in ./data (its stats cache lands there);
#   - the default user, the W&B key absent from the image, the base pinned by digest, the build context.
# It prints the build time, the image size and the context size, skips (exit 0, saying why) where podman
# cannot be installed or run, and removes its containers, images and volumes (all but the cached base).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
started=$SECONDS

say() { echo "== docker image: $*"; }
skip() { say "skipped: $*"; exit 0; }
fail() { echo "docker image test FAILED: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || skip "needs root (rootful podman, debootstrap, a test user); run it as root"
tools=(podman runc debootstrap podman-compose)
say "start; load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (timings below scale with it)"
for tool in "${tools[@]}"; do
  if ! command -v "$tool" >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap podman-compose) \
      >/dev/null 2>&1 || skip "podman could not be installed (apt-get install podman runc debootstrap podman-compose failed)"
    say "installed podman runc debootstrap podman-compose (apt-get) in $((SECONDS - started)) s"
    break
  fi
done

state=${RESNET_LITE_IMAGE_CACHE:-/var/cache/resnet_lite-image-test}
mkdir -p "$state"
exec 9>"$state/lock"
flock 9  # one run at a time per machine: the storage and the test user are shared
cat >"$state/containers.conf" <<'EOF'
[containers]
# the engine's defaults exceed this machine's hard limits ("error setting rlimit ... operation not permitted")
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
cat >"$state/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$state/storage"
runroot = "/run/resnet_lite-image-test"
EOF
export CONTAINERS_CONF="$state/containers.conf" CONTAINERS_STORAGE_CONF="$state/storage.conf"
podman info >"$state/info.log" 2>&1 || skip "podman cannot run here: $(grep -m1 -i error "$state/info.log" || tail -1 "$state/info.log")"
engine="$(podman --version), $(runc --version | head -1), podman-compose $(podman-compose --version 2>&1 | sed -n 's/^podman-composer* version *//p' | head -1)"

work=$(mktemp -d /var/tmp/resnet_lite-image-test.XXXXXX)
image=localhost/resnet_lite-test:$$
compose_image=localhost/resnet_lite:0.1.0  # compose.yaml's image:
made=()  # context probes this script created in the checkout
cleanup() {
  set +e
  if [[ -n ${RESNET_LITE_IMAGE_TEST_KEEP:-} ]]; then say "kept $work and the images (RESNET_LITE_IMAGE_TEST_KEEP)"; return; fi
  podman rm -af -t 0 >/dev/null 2>&1
  for id in $(podman images -a --format '{{.ID}}' | sort -u); do
    [[ -n ${base_id:-} && $id == "${base_id:0:12}"* ]] || podman rmi -f "$id" >/dev/null 2>&1
  done
  podman volume rm -af >/dev/null 2>&1
  if podman network exists resnet_lite-test_default 2>/dev/null; then podman network rm resnet_lite-test_default >/dev/null; fi
  [[ ${#made[@]} -eq 0 ]] || rm -rf "${made[@]}"
  rm -rf "$work"
  if [[ -n ${ok:-} ]]; then say "ok in $((SECONDS - started)) s, cleanup included"; fi
}
trap cleanup EXIT
trap 'echo "docker image test FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
# Run a command or a function of this script (in the background, so that set -e holds inside it), output in step.log.
log() {
  "$@" >"$work/step.log" 2>&1 &
  wait $! || { tail -n 60 "$work/step.log"; fail "$*"; }
}

# ---------------------------------------------------------------- the local base, standing in for pytorch/pytorch
pins=$(grep -E '^(torch|torchvision)==' .ci/constraints.txt | sort | tr '\n' ' ')
[[ $pins == torch==*" "torchvision==*" " ]] || fail "no torch/torchvision pins in .ci/constraints.txt"
ca=/etc/ssl/certs/ca-certificates.crt  # Debian's bundle, with this machine's locally added certificates
make_base() {
  local t0=$SECONDS download
  # shellcheck disable=SC2086  # pins: two words
  python3 -m pip download -q --only-binary=:all: --python-version 3.11 -d "$work/wheels" $pins &
  download=$!
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" \
    http://deb.debian.org/debian
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
  if [[ -f $ca ]]; then cp "$ca" "$work/rootfs/etc/ssl/certs/host-ca-bundle.crt"; fi
  tar -C "$work/rootfs" --numeric-owner -c . | podman import -q - "$base-os"
  rm -rf "$work/rootfs"
  echo "base: debootstrap and import $((SECONDS - t0)) s"
  wait "$download"
  mkdir "$work/empty"
  # one layer (--layers=false): the venv with torch, from the wheels mounted into the build
  podman build --layers=false -v "$work/wheels:/wheels:ro" --build-arg OS_IMAGE="$base-os" --build-arg PINS="$pins" \
    -f docker/test_base.Containerfile -t "$base" "$work/empty"
  podman rmi "$base-os" >/dev/null  # its layer stays, under the base
  rm -rf "$work/wheels"
  echo "base: torch installed $((SECONDS - t0)) s"
  podman run --rm "$base" python -c "import torch, torchvision; print('base: torch', torch.__version__, 'torchvision', torchvision.__version__)"
}
key=$( (declare -f make_base; cat docker/test_base.Containerfile; echo "$pins"; if [[ -f $ca ]]; then sha256sum <"$ca"; fi) \
  | sha256sum | cut -c1-16)
base=localhost/resnet_lite-test-base:$key
if podman image exists "$base"; then
  say "local base $base (cached)"
else
  for old in $(podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/resnet_lite-test-base:' || true); do
    podman rmi -f "$old" >/dev/null
  done
  say "making the local base $base: debootstrap bookworm + $pins(once per machine)"
  t=$SECONDS
  log make_base
  grep '^base:' "$work/step.log"
  say "local base made in $((SECONDS - t)) s"
fi
base_id=$(podman image inspect --format '{{.Id}}' "$base")

# ---------------------------------------------------------------- the build
t=$SECONDS
log podman build --build-arg BASE_IMAGE="$base" -f docker/Dockerfile -t "$image" .
build_s=$((SECONDS - t))
grep -m1 '^resnet_lite /' "$work/step.log" || true  # absent when every layer came from the cache
size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
mb() { echo "$(( $1 / 1000000 )) MB"; }
say "built docker/Dockerfile in ${build_s} s ($engine)"
say "image size $(mb "$size"): $(mb $((size - base_size))) from docker/Dockerfile on the local base's $(mb "$base_size")"

# The build context, as the engine sends it: runs/, data/ and .git must stay out (probes where they are absent).
for dir in runs data wandb; do
  if [[ ! -e $dir ]]; then mkdir "$dir" && echo probe >"$dir/probe.bin" && made+=("$repo/$dir"); fi
done
printf 'FROM %s\nCOPY . /context\n' "$base" >"$work/Context.containerfile"
log podman build -f "$work/Context.containerfile" -t localhost/resnet_lite-test-context:$$ .
context=$(podman run --rm localhost/resnet_lite-test-context:$$ sh -c \
  'cd /context && for p in .git .ci runs data wandb; do [ ! -e "$p" ] || echo "LEAKED $p"; done; echo "$(du -sk . | cut -f1) kB in $(find . -type f | wc -l) files"')
[[ $context != *LEAKED* ]] || fail "the build context holds what .dockerignore should keep out: $context"
say "build context $context (.dockerignore keeps out .git, .ci, runs, data, wandb)"
rm -rf "${made[@]}"; made=()

# ---------------------------------------------------------------- the image as a user runs it
[[ $(podman image inspect --format '{{.Config.User}}' "$image") == 1000:1000 ]] || fail "the image's USER is not 1000:1000"
[[ $(podman run --rm "$image" id -u) == 1000 ]] || fail "the image does not run as uid 1000 by default"
if podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | grep '^WANDB_API_KEY' >/dev/null; then
  fail "WANDB_API_KEY is baked into the image"
fi

user=resnet-ci
id "$user" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin --user-group "$user"
uid=$(id -u "$user") gid=$(id -g "$user")
home=$work/user
mkdir -p "$home/runs" "$home/data" "$home/cache"
chown -R "$uid:$gid" "$home"
export WANDB_MODE=offline  # passed in with -e, as launch/README.md shows; never stored in the image
user_opts=(--user "$uid:$gid" -v "$home/data:/data" -v "$home/runs:/workspace/runs" -v "$home/cache:/cache"
  -e WANDB_API_KEY -e WANDB_MODE)
as_user() { podman run --rm "${user_opts[@]}" "$@"; }
owned() {  # every file under $1 belongs to the test user
  local foreign
  foreign=$(find "$1" ! -uid "$uid" -printf '%u:%g %p\n' | head -5)
  [[ -z $foreign ]] || fail "files in $1 not owned by $user: $foreign"
}

t=$SECONDS
log as_user "$image" accelerate launch -m resnet_lite.train --data synthetic --epochs 1 --output-dir runs/smoke \
  data.synthetic_train=512 data.synthetic_test=256
grep -E '^ *(epoch|1/1) ' "$work/step.log"
for f in summary.json model_last.safetensors config.yaml metrics.jsonl; do
  [[ -s $home/runs/smoke/$f ]] || fail "train wrote no runs/smoke/$f"
done
compgen -G "$home/runs/smoke/wandb/offline-run-*" >/dev/null || fail "no offline W&B run in runs/smoke/wandb"
log as_user "$image" python -m resnet_lite.evaluate runs/smoke
grep -m1 '^saved ' "$work/step.log"
log as_user "$image" python -m resnet_lite.export runs/smoke --format onnx --output runs/smoke/model.onnx
grep -m1 '^wrote ' "$work/step.log"
owned "$home"
say "train, evaluate, export as uid $uid ($user) in $((SECONDS - t)) s; files in the bind mounts are $user's:"
stat -c '   %U:%G %n' "$home/runs/smoke/summary.json" "$home/runs/smoke/model.onnx" | sed "s|$home/||"

# docker stop: SIGTERM to PID 1 (the entrypoint), which passes one to the trainer: it checkpoints after the step
# and exits; --resume then finishes the epoch it stopped in.
t=$SECONDS
stopper=resnet_lite-test-stop-$$
train_long=(accelerate launch -m resnet_lite.train --data synthetic --output-dir runs/stopped
  data.synthetic_train=1024 data.synthetic_test=64)
podman run -d --name "$stopper" "${user_opts[@]}" "$image" "${train_long[@]}" --epochs 20 >/dev/null
for _ in $(seq 180); do
  if podman logs "$stopper" 2>&1 | grep 'starting; run directory' >/dev/null; then break; fi  # no -q: no SIGPIPE
  sleep 1
done
podman stop -t 120 "$stopper" >/dev/null
stop_rc=$(podman wait "$stopper")
podman logs "$stopper" >"$work/stop.log" 2>&1
podman rm "$stopper" >/dev/null
stopped=$(grep -m1 -o 'stopped by SIGTERM after step [0-9]* (epoch [0-9]*)' "$work/stop.log") \
  || { tail -n 30 "$work/stop.log"; fail "podman stop: the trainer did not stop with a checkpoint"; }
compgen -G "$home/runs/stopped/checkpoints/*" >/dev/null || fail "podman stop left no checkpoint in runs/stopped/checkpoints"
epoch=$(grep -o '[0-9]*)$' <<<"$stopped" | tr -d ')')
log as_user "$image" "${train_long[@]}" --resume --epochs "$epoch"
grep -q "^ *$epoch/$epoch " "$work/step.log" || { tail -n 30 "$work/step.log"; fail "--resume after podman stop did not finish"; }
owned "$home"
say "podman stop: $stopped, exit $stop_rc; --resume finished epoch $epoch; in $((SECONDS - t)) s"

# ---------------------------------------------------------------- compose.yaml's service, with podman-compose
# podman-compose 1.0.3 passes shm_size, ulimits, user, volumes and environment on, and ignores the GPU
# reservation (deploy.resources.reservations.devices), which Docker Compose would refuse on a machine without
# NVIDIA's runtime. Its build is compose.yaml's own (cached layers of the build above). The file runs from a copy
# in the work folder, so that its ../data and ../runs are folders of the test user and not of the checkout.
t=$SECONDS
log podman-compose -p resnet_lite-test -f docker/compose.yaml build --build-arg BASE_IMAGE="$base"
mkdir -p "$work/compose/docker" "$work/compose/data" "$work/compose/runs"
cp docker/compose.yaml "$work/compose/docker/compose.yaml"
chown -R "$uid:$gid" "$work/compose/data" "$work/compose/runs"
# a tiny CIFAR-10 in the official binary layout, written by the user in the container (tests/support/formats.py)
log podman run --rm --user "$uid:$gid" -v "$work/compose/data:/data" -v "$repo/tests/support/formats.py:/tmp/formats.py:ro" \
  "$compose_image" python /tmp/formats.py cifar10-bin /data 256 64
# This machine refuses to raise a hard limit (runc: "error setting rlimit ... operation not permitted"), and podman
# drops containers.conf's default_ulimits once a service sets any: the override keeps nofile and nproc at this
# machine's limits and memlock at its 8 MiB, in place of compose.yaml's unlimited. Everything else is compose.yaml's.
cat >"$work/compose/ulimits.yaml" <<'EOF'
services:
  train:
    ulimits:
      nofile: 20000
      nproc: 32768
      memlock: 8388608
EOF
(
  cd "$work/compose"
  export RESNET_LITE_UID=$uid RESNET_LITE_GID=$gid
  log podman-compose -p resnet_lite-test -f docker/compose.yaml -f ulimits.yaml run --rm -T --no-deps train \
    accelerate launch -m resnet_lite.train --variant model5 --epochs 1 --output-dir runs/compose
  grep -q '^exit code: 0$' "$work/step.log" || { tail -n 40 "$work/step.log"; fail "podman-compose run"; }
  echo "   podman-compose ran: $(grep -m1 '^podman run' "$work/step.log" | grep -o -- '--\(user\|shm-size\|ulimit\|net\)[ =][^ ]*\|-[ue] [^ ]*' | tr '\n' ' ')"
)
[[ -s $work/compose/runs/compose/summary.json ]] || fail "compose's service wrote no runs/compose/summary.json"
[[ -s $work/compose/data/cifar-10-batches-bin.stats.json ]] || fail "no data stats cache in compose's ./data"
owned "$work/compose/data"
owned "$work/compose/runs"
say "compose.yaml's service (podman-compose run --rm -T --no-deps train ...) as uid $uid in $((SECONDS - t)) s"

# The base pinned by digest, the form the Dockerfile documents for the official image (every layer from cache).
digest=$(podman image inspect --format '{{.Digest}}' "$base")
log podman build --build-arg BASE_IMAGE="$base@$digest" -f docker/Dockerfile -t "$image-digest" .
say "BASE_IMAGE pinned as name:tag@digest ($base@${digest:0:19}...) builds"
ok=1
