"""What the tests share that is not a fixture (fixtures: tests/conftest.py): writers of the official data formats
(formats), a real one-node Slurm (slurm), the tiny shared run's settings (tiny_run), the report's notebook network
(notebook), crafted hostile files (crafted), every setting's name and default (settings); here: the checkout and a
fresh clone of it."""
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout


def fresh_copy(to: Path) -> Path:
    """The files a fresh clone of the checkout holds (tracked, or new and not ignored), copied to `to`: nothing built
    or installed. Not a git checkout (an unpacked sdist): all of it but what a run or a build leaves."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        shutil.copytree(REPO, to, ignore=shutil.ignore_patterns("runs", ".git", "__pycache__", "*.egg-info"))
        return to
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO / name).is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, to / name)
    return to
