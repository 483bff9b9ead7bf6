"""launch/wandb_sweep.yaml run the way `wandb agent` runs it, without a W&B server: the command built from the sweep
file as wandb's Agent._command_run builds it (its own create_sweep_command and create_sweep_command_args expand
${env}, ${program} and ${args} / ${args_no_hyphens} with a run's values), the agent's environment (WANDB_SWEEP_ID,
WANDB_RUN_ID, WANDB_SWEEP_PARAM_PATH written as the agent writes it), started and stopped with wandb's own
AgentProcess (its own process group; terminate() is the agent's stop), W&B offline. Read back: config.yaml, and the
offline run's transaction log."""
import fcntl
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from resnet_lite.config import resolve_config
from resnet_lite.train import main as train_main

from support import REPO
from support.formats import read_wandb_records, wandb_items

SWEEP = yaml.safe_load((REPO / "launch" / "wandb_sweep.yaml").read_text())
SWEEP_ID, RUN_ID = "abc123xy", "run7q2zk"
# what the sweep could give a run (each list's last value, each range's smallest), and, as fixed `value:` parameters
# would come through ${args} too, what makes the run a short one on a CPU
SWEPT = {"optim.lr": 0.2, "optim.weight_decay": 0.0001, "label_smoothing": 0.2, "augment.cutmix_alpha": 1.0,
         "augment.mixup_alpha": 0.8}
SHORT = {"data.spec": "synthetic", "data.synthetic_train": 128, "data.synthetic_test": 64, "data.image_size": 8,
         "batch_size": 32, "eval_batch_size": 64, "compile": False, "drop_last": False, "wandb.log_every_steps": 2}


def agent_command(values: dict, args_macro: str = "${args}", param_path: str = "") -> list[str]:
    """The command line wandb's agent runs for a run with `values` (wandb_agent.Agent._command_run)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command([args_macro if c == "${args}" else c for c in SWEEP["command"]])
    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(interpreter=["python"], program=[SWEEP["program"]], args_json_file=[param_path],
                      env=["/usr/bin/env"])
    out = []
    for c in map(str, command):
        out += (sweep_vars.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    return out


def agent_env(tmp_path, values: dict, **extra) -> dict:
    """The environment the agent gives a run: its own (WANDB_DIR the folder it runs in) plus the run's id and values."""
    from wandb.sdk.lib import config_util

    param_path = tmp_path / "wandb" / f"sweep-{SWEEP_ID}" / f"config-{RUN_ID}.yaml"
    config_util.save_config_file_from_dict(str(param_path), {k: {"value": v} for k, v in values.items()})
    env = dict(os.environ, WANDB_SWEEP_ID=SWEEP_ID, WANDB_RUN_ID=RUN_ID, WANDB_SWEEP_PARAM_PATH=str(param_path),
               WANDB_DIR=str(tmp_path), WANDB_PROJECT="sweep-project", WANDB_MODE="offline", WANDB_SILENT="true",
               OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"),  # no Accelerate config: its defaults, one process
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "RESNET_LITE_TEST_CRASH", "WANDB_NAME", "WANDB_RUN_GROUP"):
        if key not in extra:
            env.pop(key, None)
    return env


def start(tmp_path, monkeypatch, values, args_macro="${args}", **extra):
    """The run, started as the agent starts it, in tmp_path (the agent's folder)."""
    from wandb.wandb_agent import AgentProcess

    monkeypatch.chdir(tmp_path)
    env = agent_env(tmp_path, values, **extra)
    return AgentProcess(command=agent_command(values, args_macro, env["WANDB_SWEEP_PARAM_PATH"]), env=env)


def wait(process, timeout=300):
    deadline = time.monotonic() + timeout
    while (code := process.poll()) is None:
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.5)
    return code


def wandb_runs(tmp_path) -> dict:
    """{offline run folder: its records by kind} of every W&B run under tmp_path."""
    runs = {}
    for log in tmp_path.rglob("offline-run-*/run-*.wandb"):
        kinds = {}
        for r in read_wandb_records(log):
            kinds.setdefault(r.WhichOneof("record_type"), []).append(r)
        runs[log.parent] = kinds
    return runs


def run_dir(tmp_path) -> Path:
    return tmp_path / "runs" / f"sweep-{SWEEP_ID}" / RUN_ID


def test_the_sweep_file_searches_real_settings_with_early_termination():
    assert SWEEP["method"] in ("bayes", "random") and SWEEP["early_terminate"]["type"] == "hyperband"
    assert SWEEP["metric"] == {"name": "test_acc", "goal": "maximize"}  # a key of every epoch's row
    command = SWEEP["command"]
    assert command[:5] == ["${env}", "accelerate", "launch", "-m", "${program}"] and command[-1] == "${args}"
    assert SWEEP["program"] == "resnet_lite.train" and "--resume" in command
    values = {k: p["values"][-1] if "values" in p else p["min"] for k, p in SWEEP["parameters"].items()}
    assert values == SWEPT
    resolve_config(overrides=[f"{k}={v}" for k, v in values.items()])  # each parameter is a setting


@pytest.mark.slow
@pytest.mark.parametrize("args_macro", ["${args}", "${args_no_hyphens}"])
def test_an_agents_run_is_one_wandb_run_with_the_swept_values(args_macro, tmp_path, monkeypatch, capfd):
    values = {**SWEPT, **SHORT, "epochs": 2}
    assert wait(start(tmp_path, monkeypatch, values, args_macro)) == 0, capfd.readouterr().err[-3000:]
    out = run_dir(tmp_path)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["optim"]["lr"] == 0.2 and config["optim"]["weight_decay"] == 1e-4 and config["label_smoothing"] == 0.2
    assert config["augment"]["cutmix_alpha"] == 1.0 and config["augment"]["mixup_alpha"] == 0.8
    assert config["optim"]["name"] == "sgd" and config["tta"] == 2  # the rest: the sweep command's --variant fast94
    (folder,) = wandb_runs(tmp_path)  # one W&B run: the agent's, in the run directory
    kinds = wandb_runs(tmp_path)[folder]
    assert folder.parent == out / "wandb" and kinds["run"][0].run.run_id == RUN_ID
    logged = wandb_items(kinds["run"][0].run.config.update)  # the sweep's values, as wandb.init took them
    for r in kinds["config"]:  # then the trainer's config
        logged.update(wandb_items(r.config.update))
    assert logged["optim.lr"] == 0.2 and logged["optim"]["lr"] == 0.2 and logged["label_smoothing"] == 0.2
    assert "Ignoring" not in capfd.readouterr().err  # wandb.init got no project, entity or id to ignore


@pytest.mark.slow
def test_a_preempted_run_is_requeued_and_a_stopped_one_is_not_both_resume(tmp_path, monkeypatch, capfd):
    """SIGUSR1 (a preemption's warning) at step 3: a checkpoint, exit 75, and W&B asked to requeue the run. Started
    again (as a requeued run is, same id and values) and stopped by the agent (SIGTERM to the launcher it started,
    which the trainer then gets from the kernel): a checkpoint, no requeue. Started again: it finishes, every start
    one part of the same W&B run, the run's steps all there once."""
    values = {**SWEPT, **SHORT, "epochs": 6, "checkpoint_every_steps": 2}  # 4 steps an epoch: 24 in all
    out = run_dir(tmp_path)
    assert wait(start(tmp_path, monkeypatch, values, RESNET_LITE_TEST_CRASH="usr1:3")) != 0
    assert "stopped by SIGUSR1" in capfd.readouterr().err
    assert [k for k in wandb_runs(tmp_path).values() if "preempting" in k]

    second = start(tmp_path, monkeypatch, values)
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob("step-0000000[5-9].pt")):  # training on, past its resumed step
        assert second.poll() is None and time.monotonic() < deadline, capfd.readouterr().err[-3000:]
        time.sleep(0.2)
    second.terminate()  # the agent's stop: SIGTERM to the process it started, `accelerate launch`
    wait(second)
    with open(out / ".lock") as lock:  # the trainer, not the agent's child, holds it: wait for it to end
        fcntl.flock(lock, fcntl.LOCK_EX)
    assert "SIGTERM received" in capfd.readouterr().err
    assert not (out / "summary.json").exists()  # stopped, not trained to the end
    assert sum("preempting" in k for k in wandb_runs(tmp_path).values()) == 1

    assert wait(start(tmp_path, monkeypatch, values)) == 0
    runs = wandb_runs(tmp_path)
    assert len(runs) == 3 and {k["run"][0].run.run_id for k in runs.values()} == {RUN_ID}
    metrics = [yaml.safe_load(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6] and metrics[-1]["step"] == 24


def test_a_sweep_whose_command_drops_its_values_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    for key, value in agent_env(tmp_path, {"optim.lr": 0.05, "label_smoothing": 0.1}).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as e:
        train_main(["--variant", "fast94", "optim.lr=0.05", "--print-config"])  # no label_smoothing=0.1: no ${args}
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: the W&B sweep gives this run label_smoothing=0.1, but its command line did not")
    assert train_main(["--variant", "fast94", "--optim.lr=0.05", "--label_smoothing=0.1", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["output_dir"] == f"runs/sweep-{SWEEP_ID}/{RUN_ID}"  # the agent's run's own folder
