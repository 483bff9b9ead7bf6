"""The training configuration: precedence, dotted overrides, one-line errors, and the shipped presets."""
import dataclasses
import re

import pytest
import yaml

from resnet_lite.config import (
    TrainConfig,
    from_dict,
    list_presets,
    load_yaml,
    parse_override,
    read_preset,
    read_yaml,
    resolve_config,
    to_dict,
)
from resnet_lite.errors import UserError
from resnet_lite.report import REPORT_TABLE
from resnet_lite.train import main as train_main

from support.settings import settings


def test_defaults_are_model5_with_one_cosine():
    cfg = TrainConfig()
    assert (cfg.model, cfg.batch_size, cfg.epochs, cfg.optim.name, cfg.optim.lr) == ("lite_r4b2", 128, 70, "adam", 0.01)
    assert cfg.schedule.name == "cosine" and cfg.optim.weight_decay == 0.0 and cfg.augment.preset == "report"
    assert resolve_config() == cfg


def test_precedence_defaults_preset_file_flags_overrides(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("epochs: 5\nbatch_size: 256\noptim: {lr: 0.02}\nschedule: {name: onecycle}\n")
    preset_only = resolve_config("model0")
    assert (preset_only.batch_size, preset_only.epochs, preset_only.optim.lr) == (512, 70, 0.01)
    assert preset_only.model == "lite_r5b2" and preset_only.name == "model0"

    with_file = resolve_config("model0", file)
    assert (with_file.batch_size, with_file.epochs, with_file.optim.lr, with_file.schedule.name) == (
        256, 5, 0.02, "onecycle")
    assert with_file.model == "lite_r5b2"  # the preset's, untouched by the file

    with_flags = resolve_config("model0", file, flags={"optim.lr": 0.03, "epochs": None})
    assert (with_flags.optim.lr, with_flags.epochs) == (0.03, 5)  # a flag left out (None) changes nothing

    full = resolve_config("model0", file, flags={"optim.lr": 0.03},
                          overrides=["optim.lr=0.04", "schedule.warmup_epochs=1"])
    assert (full.optim.lr, full.schedule.warmup_epochs, full.batch_size) == (0.04, 1.0, 256)


def test_base_config_sits_under_everything():
    base = to_dict(resolve_config("model2", overrides=["epochs=3"]))
    cfg = resolve_config(base=base, overrides=["epochs=4"])
    assert (cfg.model, cfg.optim.name, cfg.optim.momentum, cfg.epochs) == ("lite_r5b2", "sgd", 0.0, 4)


@pytest.mark.parametrize("text, key, value", [
    ("optim.lr=0.05", "optim.lr", 0.05),
    ("optim.weight_decay=5e-4", "optim.weight_decay", 5e-4),  # YAML 1.1 would read a string
    ("mixed_precision=no", "mixed_precision", "no"),  # YAML 1.1 would read False
    ("augment.flip=off", "augment.flip", "off"),
    ("compile=true", "compile", True),
    ("output_dir=null", "output_dir", None),
    ("optim.betas=[0.8, 0.99]", "optim.betas", [0.8, 0.99]),
    ("name=a=b", "name", "a=b"),
])
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


def test_override_values_get_their_field_types():
    cfg = resolve_config(overrides=["optim.weight_decay=5e-4", "optim.betas=[0.8, 0.99]", "data.image_size=16",
                                    "data.root=null", "augment.flip=false", "drop_rate=0"])
    assert cfg.optim.weight_decay == 5e-4
    assert cfg.optim.betas == (0.8, 0.99) and cfg.data.image_size == 16 and cfg.data.root is None
    assert cfg.augment.flip is False and cfg.drop_rate == 0.0 and isinstance(cfg.drop_rate, float)
    # "none" means null where the field cannot be a string; a folder may well be called "none"
    assert resolve_config(overrides=["data.image_size=None", "data.root=none"]).data == dataclasses.replace(
        cfg.data, image_size=None, root="none")


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown setting 'optim.lrr' in the overrides; did you mean 'optim.lr'?"),
    ("lr=1", "did you mean 'optim.lr'?"),
    ("data.weight_decay=1", "did you mean 'optim.weight_decay'?"),
    ("optimm.lr=1", "did you mean 'optim'?"),
    ("epoch=3", "did you mean 'epochs'?"),
    ("zzzz=3", "known settings: name, model"),
])
def test_unknown_key_suggests_the_closest(override, message):
    with pytest.raises(UserError, match="^unknown setting") as e:
        resolve_config(overrides=[override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_files_read_yaml_1_2_scalars(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("mixed_precision: no\noptim: {weight_decay: 1e-4}\ncompile: True\n")
    cfg = resolve_config(file=file)
    assert (cfg.mixed_precision, cfg.optim.weight_decay, cfg.compile) == ("no", 1e-4, True)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match=f"unknown setting 'optim.learning_rate' in {file}"):
        resolve_config(file=file)


@pytest.mark.parametrize("override, message", [
    ("epochs=1.5", "epochs must be an integer, got 1.5"),
    ("optim.lr=fast", "optim.lr must be a number, got 'fast'"),
    ("compile=1", "compile must be true or false, got 1"),
    ("compile=yes", "compile must be true or false, got 'yes'"),
    ("model=5", "model must be a string, got 5"),
    ("optim.betas=[0.9]", "optim.betas must be a list of 2 numbers"),
    ("data=cifar10", "data must be a mapping"),
    ("mixed_precision=bf15", "mixed_precision='bf15' is not one of auto, no, fp16, bf16; did you mean 'bf16'?"),
    ("optim.name=adamm", "did you mean 'adam'?"),
    ("epochs=0", "epochs=0 must be >= 1"),
    ("batch_size=100", None),  # fine on its own ...
    ("grad_accum=3", "batch_size=128 does not split into grad_accum=3"),
    ("compile=true compile_backend=aot_eagr", "compile_backend='aot_eagr' is not a torch.compile backend here; "
                                               "did you mean 'aot_eager'?"),
])
def test_wrong_types_and_values_name_the_key(override, message):
    if message is None:
        assert resolve_config(overrides=[override]).batch_size == 100
        return
    with pytest.raises(UserError) as e:
        resolve_config(overrides=override.split())
    assert message in str(e.value)


@pytest.mark.parametrize("text", ["foo", "=3", "optim..lr=1"])
def test_malformed_override(text):
    with pytest.raises(UserError, match="write KEY=VALUE"):
        parse_override(text)


def test_unknown_preset_lists_the_closest():
    with pytest.raises(UserError, match=r"unknown preset 'model55'; did you mean model5.*presets: .*model0, model1"):
        resolve_config("model55")


def test_bad_config_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_config(file=tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("epochs: [1\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        resolve_config(file=tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        resolve_config(file=tmp_path / "list.yaml")


def test_resolved_config_round_trips_through_yaml():
    cfg = resolve_config("model7", overrides=["optim.betas=[0.8, 0.95]", "data.spec=synthetic", "augment.cutout=8"])
    again = from_dict(TrainConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    assert again == cfg and dataclasses.is_dataclass(again.optim)


@pytest.mark.parametrize("row", REPORT_TABLE, ids=lambda r: f"model{r['model']}")
def test_report_presets_match_table_1(row):
    cfg = resolve_config(f"model{row['model']}")
    assert cfg.model == row["variant"]
    assert (cfg.batch_size, cfg.eval_batch_size) == (row["train_batch"], row["test_batch"])
    assert (cfg.optim.name, cfg.optim.lr) == (row["optimizer"], row["lr"])
    assert cfg.epochs == 70 and cfg.optim.weight_decay == 0.0 and cfg.data.spec == "cifar10"
    assert cfg.augment.preset == "report"
    assert (cfg.schedule.name, cfg.schedule.t_max, cfg.schedule.final_lr_fraction) == ("report_cosine", 200, 0.0)
    if row["optimizer"] == "sgd":
        assert cfg.optim.momentum == 0.0  # torch's SGD default, as the notebook ran it
    header = read_preset.__globals__["_presets_dir"]().joinpath(f"model{row['model']}.yaml").read_text().splitlines()[0]
    assert header.startswith(f"# Model {row['model']} of the report's Table 1: ")


def test_older_configs_name_the_reports_augmentation_and_schedule_seed_and_still_read(tmp_path):
    """`seed` and `seed_cosine` (before "seed" was kept for the random seed) in a run's config.yaml, a checkpoint's
    config or an override: the same settings under their names now."""
    old = tmp_path / "config.yaml"
    old.write_text("augment: {preset: seed}\nschedule: {name: seed_cosine, t_max: 200}\nseed: 3\n")
    for cfg in (resolve_config(file=old), resolve_config(base=read_yaml(old)),
                resolve_config(overrides=["augment.preset=seed", "schedule.name=seed_cosine", "seed=3"])):
        assert (cfg.augment.preset, cfg.schedule.name, cfg.seed) == ("report", "report_cosine", 3)


def test_every_preset_resolves():
    for name in list_presets():
        assert resolve_config(name).name == name


def test_every_setting_has_a_description():
    missing = [path for path, f in settings() if not f.metadata.get("help")]
    assert not missing, f"add field(metadata={{'help': ...}}) to {missing}"
    assert len(list(settings())) > 50


def test_print_config_prints_the_resolved_yaml_and_trains_nothing(tmp_path, capsys):
    args = ["--variant", "model0", "--epochs", "3", "--output-dir", str(tmp_path / "run"), "optim.lr=0.5"]
    assert train_main(["--print-config", *args]) == 0
    printed = load_yaml(capsys.readouterr().out)
    expected = resolve_config("model0", flags={"epochs": 3, "output_dir": str(tmp_path / "run")},
                              overrides=["optim.lr=0.5"])
    assert from_dict(TrainConfig, printed) == expected and printed["optim"]["lr"] == 0.5
    assert list(printed) == [f.name for f in dataclasses.fields(TrainConfig)]  # the order of config.yaml
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as e:  # a bad setting is the same one-line error as when training
        train_main(["--print-config", "optim.lrr=1"])
    assert e.value.code == 2 and "did you mean 'optim.lr'?" in capsys.readouterr().err


def test_print_config_without_output_dir_shows_where_a_run_would_go(capsys):
    assert train_main(["--print-config", "--variant", "fast"]) == 0
    assert re.fullmatch(r"runs/fast-\d{8}-\d{6}(-\d+)?", load_yaml(capsys.readouterr().out)["output_dir"])


@pytest.mark.parametrize("argv, message", [
    (["--optim.lrr=0.1"], "error: unknown setting 'optim.lrr' in the overrides; did you mean 'optim.lr'?"),
    (["--lable_smoothing", "0.1"], "error: unknown setting 'lable_smoothing' in the overrides; did you mean "
                                   "'label_smoothing'?"),
    (["--optim.lr", "fast"], "error: optim.lr must be a number, got 'fast'"),
    (["--data.image_size=big"], "error: data.image_size must be an integer or null, got 'big'"),
    (["--optim.lr", "--epochs", "2"], "error: --optim.lr needs a value; write --optim.lr=VALUE or --optim.lr VALUE"),
    (["--ema.enabled=maybe"], "error: ema.enabled must be true or false, got 'maybe'"),
    # other tools' names (timm's train.py, Lightning, Hugging Face) say which setting is ours
    (["--learning-rate", "0.1"], "error: unknown setting 'learning_rate' in the overrides; did you mean 'optim.lr'?"),
    (["--max_epochs=3"], "error: unknown setting 'max_epochs' in the overrides; did you mean 'epochs'?"),
    (["--smoothing", "0.1"], "error: unknown setting 'smoothing' in the overrides; did you mean 'label_smoothing'?"),
    (["--model-ema"], "error: unknown setting 'model_ema' in the overrides; did you mean 'ema.enabled'?"),
    (["--mixup", "0.2"], "error: unknown setting 'mixup' in the overrides; did you mean 'augment.mixup_alpha'?"),
])
def test_flag_errors_are_the_overrides_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train_main([*argv, "--print-config"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(message) and err.count("\n") == 1


def test_every_other_tools_name_points_at_a_setting():
    from resnet_lite.config import OTHER_TOOLS_NAMES, _paths

    assert set(OTHER_TOOLS_NAMES.values()) <= set(_paths(TrainConfig))
