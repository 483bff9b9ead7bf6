"""A user's mistake under a launcher reads as one line, as it does with one process: two real CPU processes (gloo)
under `accelerate launch` (launch/cpu.yaml) and torchrun, their whole output read line by line.

The line is the main process's; every process exits with 2; no process prints a traceback (a peer that waited for
one that had stopped used to print gloo's "Connection closed by peer"). What follows the line is the launcher's own
report of the failed processes (torch.distributed.elastic's ChildFailedError), which the trainer cannot turn off:
the tests allow those lines and nothing else. The Slurm recipes run the same `accelerate launch` (tests/test_slurm.py
has one of them fail the same way on a real Slurm).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO
from support.formats import write_imagefolder

BIN = Path(sys.executable).parent
TINY = ["--epochs", "1", "--batch-size", "16", "data.image_size=8"]

# Each process runs the trainer through this file, which records the exit status it leaves with: a process the
# launcher stops with a signal records nothing. With a URL, CIFAR-10's comes from there (an unreachable one).
WORKER = """\
import dataclasses, os, sys
from pathlib import Path
from resnet_lite.data import cifar
from resnet_lite.train import main
if os.environ.get("CIFAR_URL"):
    cifar.SOURCES["cifar10"] = dataclasses.replace(cifar.SOURCES["cifar10"], url=os.environ["CIFAR_URL"])
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
Path(os.environ["EXIT_CODES"], os.environ["RANK"]).write_text(str(code))
sys.exit(code)
"""

# The launcher's report: torch.distributed.elastic's log lines, its own traceback and the ChildFailedError table.
LAUNCHER_LINE = re.compile(
    r"[WE]\d{4} [\d:.]+ \d+ torch/distributed/elastic/.*"
    r"|Traceback \(most recent call last\):"
    r"|  File \"[^\"]*/(bin/(accelerate|torchrun)|site-packages/(accelerate|torch)/[^\"]*)\", line \d+, in [\w<>]+"
    r"|    .*"  # a frame's source line, and the ^^^ under it
    r"|torch\.distributed\.elastic\.multiprocessing\.errors\.ChildFailedError: ?"
    r"|=+|-+|\S+ FAILED|Failures:|Root Cause \(first observed failure\):|<NO_OTHER_FAILURES>|\[\d+\]:"
    r"|  (time|host|rank|exitcode|error_file|traceback) *: .*"
)


def _corrupt_images(tmp_path):
    root = tmp_path / "images"
    write_imagefolder(root)
    first = sorted((root / "train").glob("*/*"))[0]
    first.write_bytes(b"not an image")
    return f"imagefolder:{root}", f"error: {first} cannot be read as an image"


def _launch(launcher, tmp_path, args, **env):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    (tmp_path / "codes").mkdir()
    command = {"accelerate": [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "launch" / "cpu.yaml")],
               "torchrun": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]}[launcher]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               EXIT_CODES=str(tmp_path / "codes"), **env)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    proc = subprocess.run([*command, str(worker), *TINY, "--data-dir", str(tmp_path / "cache"),
                           "--output-dir", str(tmp_path / "run"), *args], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    codes = {p.name: p.read_text() for p in (tmp_path / "codes").iterdir()}
    return proc.returncode, proc.stdout.splitlines(), codes


@pytest.mark.slow
@pytest.mark.parametrize("launcher, case", [
    ("accelerate", "missing folder"),  # found before the processes connect
    ("torchrun", "missing folder"),
    ("accelerate", "corrupt image"),  # met while the main process decodes, the other one waiting for it
    ("torchrun", "failed download"),  # met while the main process downloads, the other one waiting for it
])
def test_a_mistake_under_a_launcher_is_one_line_and_every_process_exits_2(launcher, case, tmp_path,
                                                                          unreachable_url):
    before = []  # what the run says of itself before the error
    if case == "missing folder":
        args, line = ["--data", "imagefolder:nope/"], "error: imagefolder:nope needs nope/train/<class>/* and "
    elif case == "corrupt image":
        spec, line = _corrupt_images(tmp_path)
        args = ["--data", spec]
    else:
        args, line = ["--data", "cifar10"], f"error: cannot download {unreachable_url} ("
        before = [f"resnet_lite: downloading {unreachable_url} to {tmp_path / 'cache'} (once)"]
    rc, lines, codes = _launch(launcher, tmp_path, args,
                               **({"CIFAR_URL": unreachable_url} if case == "failed download" else {}))
    output = "\n".join(lines)
    assert rc != 0 and codes == {"0": "2", "1": "2"}, output  # the launcher itself says 1 for any failure
    ours = [text for text in lines if not LAUNCHER_LINE.fullmatch(text)]
    assert len(ours) == len(before) + 1 and ours[:-1] == before and ours[-1].startswith(line), output
    assert lines[:len(ours)] == ours, output  # then the launcher's report, and nothing else
    assert "resnet_lite" not in "\n".join(lines[len(ours):]), output  # no frame of the trainer's
    assert not (tmp_path / "run").exists()  # no run directory was started
