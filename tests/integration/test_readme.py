"""The README is the front door: its commands must be the ones CI and the docs use, and must still parse.

- The test command is .ci/run's TEST_COMMAND; the install command is the brief's main job.
- Every `python -m resnet_lite.X` / `-m resnet_lite.train` command: the module exists, each --flag is one its
  --help lists, each --variant a shipped preset, each KEY=VALUE a real setting; `accelerate launch` flags parse
  with Accelerate's own parser, and its --config_file exists (a "$(python -m resnet_lite.launch NAME)" one: the
  path that command prints); every launch/ or docker/ file named exists.
- The Python blocks run as written, and so does the CPU try-out's bash block, in a copy of the checkout as a fresh
  clone has it, with nothing beyond the README's own `pip install .` and nothing written outside runs/.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache

import pytest

from resnet_lite.config import list_presets, resolve_config, settings_argv

from support import REPO, fresh_copy

README = (REPO / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.S | re.M)


def _commands():
    """Each bash command of the README as one line (backslash continuations joined, comments dropped)."""
    out = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _section(title):
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_test_command_is_what_ci_runs():
    block, _lint = re.findall(r"```bash\n(.*?)\n```", _section("Run the tests"), re.S)
    ci = (REPO / ".ci" / "run").read_text()
    assert re.findall(r"^TEST_COMMAND='(.*)'$", ci, re.M) == [block.strip()]
    assert 'eval "$TEST_COMMAND" || rc=$?' in ci and ci.rstrip().endswith("exit $(( rc || image_rc || lint_rc ))")
    (lint,) = re.findall(r"```bash\n(.*?)\n```", _section("Run the tests").split("Lint and types", 1)[1], re.S)
    assert re.findall(r"^LINT_COMMAND='(.*)'$", ci, re.M) == [lint.strip()] and 'eval "$LINT_COMMAND"' in ci


def test_install_command_is_the_main_job():
    (block,) = re.findall(r"```bash\n(.*?)\n```", _section("Install and train"), re.S)
    assert block.strip() == "pip install . && accelerate launch -m resnet_lite.train --variant model5"


def test_ci_runs_the_main_command_as_written():
    """.ci/run runs MAIN_COMMAND (plus --epochs 1) in a fresh venv from the checkout: it must be the README's."""
    (block,) = re.findall(r"```bash\n(.*?)\n```", _section("Install and train"), re.S)
    (ci,) = re.findall(r"^MAIN_COMMAND='(.*)'$", (REPO / ".ci" / "run").read_text(), re.M)
    assert ci == block.strip()
    assert 'eval "$MAIN_COMMAND --epochs 1' in (REPO / ".ci" / "run").read_text()


@cache
def _help(module):
    proc = subprocess.run([sys.executable, "-m", f"resnet_lite.{module}", "--help"], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, COLUMNS="200"))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _resnet_lite_invocations():
    """(command, module, words after the module) for every command that runs a resnet_lite module."""
    found = []
    for command in _commands():
        for segment in command.split("&&"):
            words = shlex.split(segment)
            if "-m" in words and words[words.index("-m") + 1].startswith("resnet_lite."):
                i = words.index("-m")
                found.append((command, words[i + 1].split(".", 1)[1], words[i + 2:]))
    return found


INVOCATIONS = _resnet_lite_invocations()


def test_the_readme_shows_every_cli():
    assert {m for _, m, _ in INVOCATIONS} == {"train", "evaluate", "predict", "export", "sweep", "launch"}


@pytest.mark.parametrize("command, module, args", INVOCATIONS, ids=[c[:60] for c, _, _ in INVOCATIONS])
def test_cli_command_uses_real_flags_presets_and_settings(command, module, args):
    usage = _help(module)
    if module == "train":  # settings written as flags (--optim.lr=0.01) are overrides: checked below
        from resnet_lite.train import build_parser

        args = settings_argv(args, options=set(build_parser()._option_string_actions))
    for word in args:
        if word.startswith("--"):
            assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", usage), f"{word} is not a flag of {module}"
    if module == "train":
        if "--variant" in args:
            assert args[args.index("--variant") + 1] in list_presets()
        overrides = [w for w in args if re.fullmatch(r"[a-z_]+(\.[a-z_]+)*=.*", w)]
        resolve_config(overrides=overrides)  # a misspelt setting raises UserError naming the closest


def test_accelerate_launch_commands_parse_and_name_real_configs():
    from accelerate.commands.launch import launch_command_parser

    commands = [c for c in _commands() if "accelerate launch" in c]
    assert len(commands) >= 4
    for command in commands:
        words = shlex.split(command.split("accelerate launch", 1)[1].split("&&")[0])
        launch_command_parser().parse_args(words)  # SystemExit on a flag Accelerate does not know
        if "--config_file" in words:
            config = words[words.index("--config_file") + 1]
            installed = re.fullmatch(r"\$\((python -m resnet_lite\.launch \w+)\)", config)
            if installed:  # "$(python -m resnet_lite.launch NAME)": the path it prints
                config = subprocess.run([sys.executable, *installed[1].split()[1:]], capture_output=True, text=True,
                                        check=True).stdout.strip()
            assert (REPO / config).is_file(), config


def test_named_files_exist():
    for path in set(re.findall(r"\b((?:launch|docker|configs|benchmarks|\.ci)/[\w./-]*\w)", README)):
        assert (REPO / path).exists(), path
    for path in ("BENCHMARKS.md", "launch/README.md"):
        assert path in README and (REPO / path).exists()


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index, tmp_path):
    code = _blocks("python")[index]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for expected in re.findall(r"print\(.*?\)\s+# (.+)$", code, re.M):  # a printed value stated in a comment
        assert expected.strip() in proc.stdout


@pytest.mark.slow
def test_the_cpu_try_out_runs_as_written_in_a_fresh_clone(tmp_path):
    (block,) = re.findall(r"```bash\n(.*?)\n```", _section("Try it on a CPU"), re.S)
    assert "onnx" not in block  # ONNX needs `pip install ".[export]"`, which the README's install does not do
    clone = fresh_copy(tmp_path / "clone")
    before = {p.relative_to(clone) for p in clone.rglob("*")}
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=clone, capture_output=True, text=True,
                          timeout=1200, env=dict(env, WANDB_MODE="disabled"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = clone / "runs" / "try"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 4 and (run / "model.pt").is_file()  # the resume's extra epoch, the export
    assert "class0.png" in proc.stdout and "evaluation-last-test-tta0.json" in " ".join(os.listdir(run))
    new = {p.relative_to(clone) for p in clone.rglob("*") if "__pycache__" not in p.parts} - before
    assert {p.parts[0] for p in new} <= {"runs"}  # nothing lands in the checkout itself
