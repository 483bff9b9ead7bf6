"""The trainer: the in-process checks (nothing trained, no process started). The rest, and what the file tests and
why: tests/integration/test_train.py."""

import pytest
import torch

from resnet_lite.outputs import console
from resnet_lite.outputs.tracking import wandb_mode
from resnet_lite.train import main
from resnet_lite.training.distributed import resolve_mixed_precision
from resnet_lite.training.optim import OptimConfig, ScheduleConfig, build_optimizer, build_scheduler, lr_factor

pytestmark = pytest.mark.usefixtures("no_wandb")


def test_report_cosine_is_the_notebooks_per_batch_cosine_annealing():
    model = torch.nn.Linear(2, 2)
    schedule = ScheduleConfig("report_cosine", t_max=200)
    ours = build_scheduler(torch.optim.Adam(model.parameters(), lr=0.01), schedule, 391, 2)
    seed_opt = torch.optim.Adam(model.parameters(), lr=0.01)
    seed = torch.optim.lr_scheduler.CosineAnnealingLR(seed_opt, T_max=200, eta_min=0)
    for step in range(782):  # two epochs at batch 128: the lr reaches 0 at step 200 and climbs back by 400
        assert ours.get_last_lr()[0] == pytest.approx(seed.get_last_lr()[0], abs=1e-9), step
        ours.optimizer.step(), seed_opt.step()
        ours.step(), seed.step()


@pytest.mark.parametrize("name", ["cosine", "onecycle", "constant"])
def test_schedules_warm_up_and_end_where_configured(name):
    cfg = ScheduleConfig(name, warmup_epochs=1, start_lr_fraction=0.1, final_lr_fraction=0.05)
    f = lr_factor(cfg, steps_per_epoch=10, epochs=5)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == pytest.approx(1.0)
    values = [f(s) for s in range(10, 50)]
    if name == "constant":
        assert values == [1.0] * 40
    else:
        assert all(a >= b for a, b in zip(values, values[1:], strict=False)) and f(50) == pytest.approx(0.05)


def test_optimizers():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sgd = build_optimizer(model, OptimConfig("sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                             no_decay_norm_bias=True))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    decay, no_decay = sgd.param_groups
    assert [p.ndim for p in decay["params"]] == [4] and decay["weight_decay"] == 5e-4
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # conv bias, BN weight and bias
    adamw = build_optimizer(model, OptimConfig("adamw", lr=1e-3, betas=(0.8, 0.9), weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.9)
    assert len(adamw.param_groups) == 1 and adamw.param_groups[0]["weight_decay"] == 0.05


# ---------------------------------------------------------------------------------------------- a real run


def test_wandb_auto_is_online_only_when_logged_in(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    mode, hint = wandb_mode("auto")
    assert mode == "disabled" and "wandb login" in hint and "\n" not in hint
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode("auto") == ("online", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("auto") == ("offline", None) and wandb_mode("disabled") == ("disabled", None)


@pytest.mark.parametrize("launcher, expected", [(None, "no"), ("no", "no"), ("fp16", "fp16"), ("bf16", "bf16")])
def test_mixed_precision_auto_on_cpu(monkeypatch, launcher, expected):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU choice")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    if launcher:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    assert resolve_mixed_precision("auto") == expected and resolve_mixed_precision("bf16") == "bf16"


def test_plain_progress_lines_for_log_files(monkeypatch, capsys):
    monkeypatch.setattr(console, "PLAIN_EVERY", 0.0)
    monkeypatch.setattr(console, "REFRESH_EVERY", 0.0)
    row = {"epoch": 1, "train_loss": 1.5, "test_loss": 1.25, "test_acc": 0.5, "lr": 0.01, "epoch_seconds": 2.0,
           "images_per_second": 100.0}
    for enabled in (False, True):
        progress = console.Progress(enabled, epochs=3, steps_per_epoch=2, interactive=False)
        progress.start_epoch(1)
        progress.update(64, lambda: 2.0, 0.01)
        progress.update(64, lambda: 1.5, 0.01)
        progress.end_epoch(row)
        lines = capsys.readouterr().out.splitlines()
        if not enabled:
            assert lines == []  # what a non-main process prints
    assert lines[0].startswith("epoch 1/3 step 1/2 loss 2.0000 lr 1.00e-02") and "img/s eta" in lines[0]
    assert lines[0].split()[-3:-1] == ["run", "eta"]  # the whole run's: 5 of its 6 steps left
    assert lines[2].split() == ["epoch", "train", "loss", "test", "loss", "test", "acc", "lr", "time", "img/s"]
    assert lines[3].split() == ["1/3", "1.5000", "1.2500", "50.00%", "1.00e-02", "2.0s", "100"]


@pytest.mark.parametrize("width", [80, 120])
def test_the_progress_line_keeps_its_step_count_and_etas_in_a_narrow_terminal(monkeypatch, width):
    """At 80 columns rich used to cut the step count to "12…" and the ETA to "-:…"; now the bar gives way first."""
    import io

    from rich.console import Console

    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setattr(console, "REFRESH_EVERY", 0.0)
    progress = console.Progress(True, epochs=70, steps_per_epoch=391, interactive=True)
    progress.start_epoch(12, done_steps=119)
    progress.update(128, lambda: 2.3456, 0.01)
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True).print(progress.bar.make_tasks_table(progress.bar.tasks))
    progress.close()
    (line,) = out.getvalue().splitlines()
    assert line.startswith("epoch 12/70 120/391 eta 0:0") and " run " in line and line.endswith("lr 1.00e-02")
    assert ("━" in line) == (width > 80)  # a bar where there is room for one


def test_list_prints_the_presets(capsys):
    main(["--list"])
    out = capsys.readouterr().out
    for i in range(9):
        assert f"model{i}" in out
    assert "2,799,146" in out and "4,587,306" in out and "91.47" in out and "report_cosine" in out
    header = next(line for line in out.splitlines() if "preset" in line and "params" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "preset", "model", "params", "batch", "eval batch", "optimizer", "lr", "epochs", "schedule", "report acc %"]
    assert "seed" not in out  # the random seed's word alone


def test_help_lists_presets_and_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "model0, model1" in out and "KEY=VALUE" in out
    for flag in ("--variant", "--config", "--data", "--data-dir", "--epochs", "--batch-size", "--lr", "--seed",
                 "--output-dir", "--wandb", "--resume", "--list"):
        assert flag in out
