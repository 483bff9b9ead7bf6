"""benchmarks/gpu_run.sh as the GPU machine runs it (issue 11): a fresh copy of the checkout, a Python that has torch,
timm and accelerate but NOT resnet_lite (that machine has no network to pip install), started from the copy's root.
`--dry-run` takes the same path on the CPU with tiny settings: every stage must run and leave its numbers."""
import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
from formats import CIFAR10_CLASSES, write_imagefolder

REPO = Path(__file__).resolve().parent.parent


def _fresh_copy(dest: Path) -> Path:
    """What a fresh clone holds (tracked files, and new ones git does not ignore), nothing built or installed."""
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def _bare_python(dest: Path) -> Path:
    """A venv that sees this environment's packages (torch, timm, accelerate...) through one .pth line. The line adds
    the folder only: the .pth files inside it, among them an editable install's finder for resnet_lite, are not read.
    wandb is hidden (a package of that name that fails to import, ahead of the line), as the GPU machine has none."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    python = dest / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    Path(site, "wandb").mkdir()
    Path(site, "wandb", "__init__.py").write_text("raise ImportError(\"No module named 'wandb'\")\n")
    return python


def _tiny_archive(path: Path) -> Path:
    """An archive laid out as ../shared/data/cifar10-jpeg.tar.gz (cifar10-jpeg/{train,test}/<class>/*.jpg)."""
    root = path.parent / "staging" / "cifar10-jpeg"
    write_imagefolder(root, classes=CIFAR10_CLASSES, counts={"train": 24, "test": 12}, size=(32, 32), formats=("jpg",))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname="cifar10-jpeg")
    return path


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 2 minutes alone; the whole GPU flow, so more on a loaded machine
def test_dry_run_from_a_fresh_copy_with_a_bare_python(tmp_path):
    clone = _fresh_copy(tmp_path / "clone")
    python = _bare_python(tmp_path / "bare")
    for missing in ("resnet_lite", "wandb"):
        probe = subprocess.run([str(python), "-c", f"import torch, timm, accelerate\nimport {missing}"], cwd=tmp_path,
                               capture_output=True, text=True)
        assert f"No module named '{missing}'" in probe.stderr, f"the bare Python must have torch etc. but not {missing}"

    out = tmp_path / "out"
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": str(python), "OUT": str(out),
           "SCRATCH": str(tmp_path / "scratch"), "ARCHIVE": str(_tiny_archive(tmp_path / "c10.tar.gz")),
           "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh", "--dry-run"], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"from {clone}/resnet_lite/__init__.py" in log  # the checkout's package, found without an install
    assert "preflight ok; 240 train / 120 test images" in log
    for stage in ("throughput", "time to accuracy: fast, fast94", "time to accuracy: model5"):
        assert f"== {stage}: exit 0" in log, log[-4000:]
    throughput = json.loads((out / "throughput.json").read_text())
    assert {r["variant"] for r in throughput["results"]} == {"lite_r4b2"}
    fast = json.loads((out / "tta_fast.json").read_text())
    assert set(fast["presets"]) == {"fast", "fast94"}
    assert all(len(p["seeds"]) == 2 for p in fast["presets"].values())
    model5 = json.loads((out / "tta_model5.json").read_text())
    assert [s["seed"] for s in model5["presets"]["model5"]["seeds"]] == [0]
    summary = (out / "summary.md").read_text()
    assert "not run" not in summary and "## Throughput" in summary
    assert "| fast | >= model5 + 0.0 pts in <= 10 s | 2 |" in summary  # judged against model5's run
    assert "| fast94 | >= model5 + 2.5 pts in <= 40 s | 2 |" in summary
