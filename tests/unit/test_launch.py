"""Launch recipes: the in-process checks (nothing trained, no process started). The rest, and what the file tests and
why: tests/integration/test_launch.py."""
import json
import re
import shlex

import pytest
import yaml

from support import REPO

LAUNCH = REPO / "launch"
DOCKER = REPO / "docker"
YAMLS = sorted(p for p in LAUNCH.glob("*.yaml") if p.name != "wandb_sweep.yaml")  # Accelerate's; the W&B sweep file:
# tests/integration/test_wandb_sweep.py
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch"), *DOCKER.glob("*.sh")])


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

