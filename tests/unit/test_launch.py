"""Launch recipes (launch/), the Docker image (docker/, .dockerignore), checked without GPUs or Docker.

- Every launch/*.yaml goes through Accelerate's own loader and its launch command is built the way
  `accelerate launch` builds it (accelerate.commands.launch + accelerate.utils.launch, then torchrun's
  own config_from_args for the multi-process launcher), without running it.
- Shell scripts pass `bash -n` and shellcheck (skipped with a reason when shellcheck is not installed).
- The CPU recipe, torchrun.sh, slurm_1node.sbatch's GPU paths and the image's entrypoint really start
  processes here; a stand-in trainer with the trainer's signal contract (first SIGTERM/SIGINT/SIGUSR1:
  finish, save, exit 75; a second one: exit at once) records what each process saw. The Slurm scripts
  run on a real Slurm in tests/test_slurm.py, on CPUs; what needs GPUs (single_gpu.yaml's one-process
  launcher, multi_gpu.yaml's torchrun under SIGTERM) runs here with SLURM_GPUS_ON_NODE set and stand-ins
  for srun/scancel/scontrol: srun runs the task once; scancel --signal signals every process of the step.
- Dockerfile, compose file and .dockerignore are parsed and checked; hadolint runs when installed.
  docker/test_image.sh (run by .ci/run, not here: it takes minutes and root) builds and runs the image.
"""
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from support import REPO

LAUNCH = REPO / "launch"
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
YAMLS = sorted(p for p in LAUNCH.glob("*.yaml") if p.name != "wandb_sweep.yaml")  # Accelerate's; the W&B sweep file:
# tests/test_wandb_sweep.py
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch"), *DOCKER.glob("*.sh")])
TRAIN = ["-m", "resnet_lite.train", "--variant", "model5"]


# The extra flags each config is documented with (launch/README.md and the YAML's own comment).
DOCUMENTED_FLAGS = {
    "single_gpu.yaml": [],
    "multi_gpu.yaml": ["--num_processes", "4"],
    "multi_node.yaml": ["--num_machines", "2", "--num_processes", "16", "--machine_rank", "1",
                        "--main_process_ip", "10.0.0.1", "--main_process_port", "29500", "--rdzv_backend", "c10d"],
    "cpu.yaml": [],
}


def test_every_launch_yaml_is_covered():
    assert {p.name for p in YAMLS} == set(DOCUMENTED_FLAGS)


@pytest.mark.parametrize("config", YAMLS, ids=lambda p: p.name)
def test_yaml_loads_with_accelerates_loader(config):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import ComputeEnvironment

    loaded = load_config_from_file(str(config))  # raises on unknown keys or bad enum values
    assert isinstance(loaded, ClusterConfig)
    assert loaded.compute_environment == ComputeEnvironment.LOCAL_MACHINE


def test_scripts_found():
    names = {p.name for p in SCRIPTS}
    assert {"slurm_1node.sbatch", "slurm_multi_node.sbatch", "torchrun.sh", "entrypoint.sh"} <= names


def _sbatch_options(script):
    options = {}
    for line in script.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.split(None, 1)[1].partition("=")
            options[key] = value
    return options


@pytest.mark.parametrize("name", ["slurm_1node.sbatch", "slurm_multi_node.sbatch"])
def test_sbatch_header_asks_for_warning_and_requeue(name):
    options = _sbatch_options(LAUNCH / name)
    assert re.fullmatch(r"B:USR1@\d+", options["--signal"])  # to the batch shell, whose trap forwards it
    assert "--requeue" in options
    assert options["--ntasks-per-node"] == "1"  # one launcher per node; it starts one process per GPU


# ------------------------------------------------------------------ processes started for real

STANDIN = '''\
"""Stand-in for resnet_lite.train with its signal contract: record what this process saw."""
import json, os, signal, sys, time
from pathlib import Path
from accelerate import Accelerator

accelerator = Accelerator()
received = []


def on_signal(signum, frame):
    received.append(signal.Signals(signum).name)
    if len(received) > 1:
        os._exit(130)


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
    signal.signal(sig, on_signal)
out = Path(os.environ["STANDIN_OUT"])
rank = accelerator.process_index
record = {"rank": rank, "world": accelerator.num_processes, "backend": accelerator.state.backend,
          "argv": sys.argv[1:], "node": os.environ.get("SLURM_NODEID")}
(out / f"ready-{rank}.json").write_text(json.dumps(record))
deadline = time.monotonic() + float(os.environ.get("STANDIN_SECONDS", "60"))
while not received and time.monotonic() < deadline:
    time.sleep(0.05)
accelerator.wait_for_everyone()  # as the trainer does: nobody leaves before the checkpoint is written
record["signals"] = received
(out / f"done-{rank}.json").write_text(json.dumps(record))
sys.exit(75 if received else 0)
'''

SRUN = '''\
"""Stand-in for srun on one node: run the step's command once, here, and exit with its status."""
import os, subprocess, sys
from pathlib import Path

args = sys.argv[1:]
while args[0].startswith("-"):
    args.pop(0)
(Path(os.environ["FAKE_SLURM"]) / "srun.pid").write_text(str(os.getpid()))
sys.exit(subprocess.call(args, env=dict(os.environ, SLURM_NODEID="0", SLURM_PROCID="0")))
'''

SCANCEL = '''\
"""Stand-in for scancel --signal=SIG JOBID: signal every process of the job step (proctrack/cgroup)."""
import os, signal, sys
from pathlib import Path
import psutil

state = Path(os.environ["FAKE_SLURM"])
with open(state / "calls.log", "a") as log:
    log.write("scancel " + " ".join(sys.argv[1:]) + "\\n")
name = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--signal="))
for process in psutil.Process(int((state / "srun.pid").read_text())).children(recursive=True):
    try:
        process.send_signal(getattr(signal, "SIG" + name))
    except psutil.NoSuchProcess:
        pass
'''

SCONTROL = '''\
"""Stand-in for scontrol: `show hostnames` lists this machine; other calls are logged."""
import os, sys
from pathlib import Path

with open(Path(os.environ["FAKE_SLURM"]) / "calls.log", "a") as log:
    log.write("scontrol " + " ".join(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["show", "hostnames"]:
    print("127.0.0.1")
'''


def _dockerfile():
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (DOCKER / "Dockerfile").read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines() if line.strip()]


def test_dockerfile_base_is_a_pinned_cuda_pytorch_image():
    steps = _dockerfile()
    args = dict(a[1].split("=", 1) for a in steps if a[0] == "ARG" and "=" in a[1])
    (base,) = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a[1]).split()[0] for a in steps if a[0] == "FROM"]
    image, _, tag = base.partition("@")[0].rpartition(":")
    assert image == "pytorch/pytorch"
    assert re.fullmatch(r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", tag), tag  # a version, never `latest`


def test_dockerfile_installs_project_and_runs_as_non_root():
    steps = _dockerfile()
    assert any(i == "RUN" and re.search(r"pip install \S*resnet_lite-src", a) for i, a in steps)
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [json.loads(a) for i, a in steps if i == "CMD"][-1] == ["accelerate", "launch", "-m", "resnet_lite.train"]
    (volumes,) = [json.loads(a) for i, a in steps if i == "VOLUME"]
    assert {"/data", "/cache", "/workspace/runs"} <= set(volumes)
    assert not any(i in ("ENV", "ARG") and "WANDB_API_KEY" in a for i, a in steps)  # never baked in


def _dockerignored(path, patterns):
    """Docker's .dockerignore rule: the last matching pattern wins, `!` re-includes, a pattern also
    matches every file below a matching folder; `*` stays within one path element, `**` spans any."""
    def regex(pattern):
        out = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        return re.compile(out + "(/.*)?")

    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if regex(pattern.lstrip("!")).fullmatch(path):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_out_runs_data_git_venvs_caches_and_keeps_the_build_inputs():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in ["runs/x/checkpoint.safetensors", "data/cifar-10-batches-bin/data_batch_1.bin", ".git/HEAD",
                 ".venv/bin/python", "venv/bin/python", "wandb/run-1/files", ".cache/torch/x",
                 "resnet_lite/__pycache__/models.cpython-311.pyc", ".pytest_cache/v", "best_model.pth"]:
        assert _dockerignored(path, patterns), path
    sources = [src for i, a in _dockerfile() if i == "COPY"
               for src in [w for w in a.split() if not w.startswith("--")][:-1]]
    assert "pyproject.toml" in sources
    for src in sources:
        assert not _dockerignored(src, patterns), src
        if src != "README.md":  # README.md is the lead's, written last; the build needs it (pyproject readme)
            assert (REPO / src).exists(), src
    assert not _dockerignored("resnet_lite/models.py", patterns)


def test_dockerfile_leaves_the_test_base_and_its_ca_bundle_to_ci():
    """docker/test_image.sh builds on a local base carrying this network's CA bundle; the shipped file must
    stay on the official base by default and never name a CA bundle or certificate setting."""
    text = (DOCKER / "Dockerfile").read_text()
    uncommented = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for word in ("ca-bundle", "ca-certificates", ".crt", "SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE",
                 "test-base"):
        assert word not in uncommented, word
    assert "ARG BASE_IMAGE=pytorch/pytorch:" in text


def _gibibytes(size):
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(size).lower()).groups()
    return int(number) * 1024 ** ("kmg".index(unit) + 1 if unit else 0) / 1024 ** 3


def test_compose_reserves_gpus_with_room_for_nccl():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    train = compose["services"]["train"]
    (device,) = train["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device.get("count") == "all" or isinstance(device.get("count"), int) or device.get("device_ids")
    assert train.get("ipc") == "host" or _gibibytes(train["shm_size"]) >= 1  # Docker's default is 64 MB
    dockerfile = REPO / "docker" / train["build"]["context"] / train["build"]["dockerfile"]
    assert dockerfile.resolve() == DOCKER / "Dockerfile"
    assert train["environment"]["WANDB_API_KEY"] is None  # passed through from the shell, unset there: unset
    targets = {volume.split(":")[1] for volume in train["volumes"]}
    assert {"/data", "/cache", "/workspace/runs"} <= targets


# --------------------------------------------------------------------------------- launch/README


def test_launch_readme_names_every_recipe_and_only_existing_files():
    readme = (LAUNCH / "README.md").read_text()
    for recipe in [*YAMLS, *SCRIPTS, DOCKER / "Dockerfile", DOCKER / "compose.yaml"]:
        assert recipe.relative_to(REPO).as_posix() in readme, recipe
    for mentioned in set(re.findall(r"\b((?:launch|docker)/[\w.-]+\.(?:yaml|sh|sbatch|md)|docker/Dockerfile)\b",
                                    readme)):
        assert (REPO / mentioned).exists(), mentioned
    for command in re.findall(r"^\s*(?:\w+=\S+ )*accelerate launch (.*?)$", readme, re.M):
        words = shlex.split(command.rstrip("\\"))
        if "--config_file" in words:
            assert (REPO / words[words.index("--config_file") + 1]).exists()


# -------------------------------------------------------------------------------- python -m resnet_lite.launch

RECIPES = sorted(p.name for p in LAUNCH.iterdir() if p.suffix in (".yaml", ".sbatch", ".sh", ".md"))
