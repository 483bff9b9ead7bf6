"""Training configuration: dataclasses built from nested dicts, YAML presets, dotted overrides (lingua style).

Each module owns its small config dataclass (DataConfig, AugmentConfig, OptimConfig, ScheduleConfig); TrainConfig
only composes them. Precedence, lowest first:

    dataclass defaults < preset (--variant NAME: configs/NAME.yaml) < --config FILE < flags < dotted overrides

    cfg = resolve_config(variant="model5", overrides=["optim.lr=0.05", "data.spec=synthetic"])
    yaml.safe_dump(to_dict(cfg))
    settings_argv(["--optim.lr=0.05", "--ema.enabled", "--data.image_size", "16"], options={"--data"})
    # -> ["optim.lr=0.05", "ema.enabled=true", "data.image_size=16"]: settings written as other tools write them

Unknown keys and wrong types raise UserError naming the key, what it should be, and the closest known key.
"""
import dataclasses
import re
import textwrap
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data.augment import RENAMED as AUGMENT_RENAMED
from .data.augment import AugmentConfig
from .data.sources import DataConfig
from .errors import UserError, did_you_mean
from .models.tta import check_tta
from .outputs.trackers import TRACKERS, check_log_with
from .outputs.tracking import WANDB_MODES, WandbConfig
from .shipped import shipped
from .training.distributed import DDPConfig
from .training.ema import EMAConfig
from .training.optim import RENAMED_SCHEDULES, OptimConfig, ScheduleConfig

__all__ = ["TrainConfig", "resolve_config", "from_dict", "to_dict", "to_yaml", "list_presets", "read_preset",
           "read_yaml", "load_yaml", "parse_override", "settings_argv", "settings_help", "MIXED_PRECISION",
           "WANDB_MODES"]

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


@dataclass
class TrainConfig:
    name: str | None = field(default=None, metadata={
        "help": "run name: prefix of the default output folder and the W&B run; null -> the preset or the model"})
    model: str = field(default="lite_r4b2", metadata={
        "help": "any name resnet_lite.create_model knows: a lite model, any timm model (resnet18, ...), "
                "hf-hub:ORG/NAME or local-dir:FOLDER"})
    pretrained: bool = field(default=False, metadata={
        "help": "start from the weights timm's pretrained config of `model` names (its Hugging Face hub or URL "
                "weights; hf-hub:/local-dir: models' own), or from pretrained_path; a new number of classes gets a "
                "new classifier"})
    pretrained_path: str | None = field(default=None, metadata={
        "help": "with pretrained: a local .safetensors/.pth file timm loads in place of the published weights "
                "(timm's --pretrained-path: pretrained_cfg_overlay=dict(file=...))"})
    initial_checkpoint: str | None = field(default=None, metadata={
        "help": "start from these weights: a .safetensors or .pth file (a state_dict, the report notebook's "
                "best_model.pth, a timm or resnet_lite checkpoint) or a run directory (its model_last; give "
                "model_best.safetensors itself for the best epoch); a new number of classes gets a new classifier. "
                "--resume never reloads it"})
    drop_rate: float = field(default=0.0, metadata={"help": "dropout before the classifier"})
    epochs: int = field(default=70, metadata={"help": "passes over the training split"})
    batch_size: int = field(default=128, metadata={
        "help": "GLOBAL images per optimizer step: all processes and accumulation steps together"})
    eval_batch_size: int = field(default=512, metadata={"help": "global, split across processes like batch_size"})
    seed: int = field(default=0, metadata={
        "help": "the random seed of the weights, the data order and the augmentation"})
    output_dir: str | None = field(default=None, metadata={
        "help": "run directory; null -> runs/<name>-<YYYYmmdd-HHMMSS>"})
    mixed_precision: str = field(default="auto", metadata={
        "choices": MIXED_PRECISION, "help": "auto: the launcher's setting, else bf16 where CUDA has it"})
    grad_accum: int = field(default=1, metadata={
        "help": "micro-batches per optimizer step (each batch_size / grad_accum images); saves memory only"})
    sync_bn: bool = field(default=False, metadata={
        "help": "SyncBatchNorm across processes (no effect with one process)"})
    channels_last: bool = field(default=False, metadata={
        "help": "channels-last memory format for the model and batches"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    compile_backend: str = field(default="inductor", metadata={
        "help": "torch.compile's backend (timm's --torchcompile): inductor generates kernels; aot_eager or eager "
                "trace the same graphs (guards, recompiles) without generating code"})
    eval_every: int = field(default=1, metadata={
        "help": "epochs between test evaluations (the last epoch is always evaluated)"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "label smoothing of the cross-entropy loss, in [0, 1)"})
    tta: int = field(default=0, metadata={
        "help": "test-time augmentation at every evaluation: 0 none, 1 flip, 2 flip + 1-pixel translate (airbench)"})
    drop_last: bool = field(default=False, metadata={
        "help": "skip each epoch's final partial batch (fixed shapes: no recompile under torch.compile)"})
    checkpoint_every_steps: int = field(default=0, metadata={
        "help": "optimizer steps between checkpoints; 0 = at epoch ends only"})
    checkpoint_every_epochs: int = field(default=1, metadata={
        "help": "epochs between end-of-epoch checkpoints; 0 = none but the last epoch's (a stop signal still saves "
                "one): benchmarks keep checkpoint writes out of the time they measure"})
    save_best: bool = field(default=True, metadata={
        "help": "write model_best.safetensors whenever the selected accuracy improves (model_last is always written)"})
    stop_check_every: int = field(default=1, metadata={
        "help": "optimizer steps between the checks for a stop signal or a non-finite loss (each one reads a few "
                "numbers from the device a step later); checkpoints and epoch ends always check"})
    cudnn_benchmark: bool = field(default=True, metadata={
        "help": "let cuDNN time its convolution algorithms per input shape and keep the fastest (shapes are fixed "
                "with drop_last); no effect on the CPU"})
    profile: int = field(default=0, metadata={
        "help": "record this many optimizer steps with torch.profiler after a warm-up of 6: a Chrome trace and a table "
                "of the top operators per process in <output_dir>/profile, then train on unprofiled; 0 = off "
                "(resnet_lite.training.profiling)"})
    keep_checkpoints: int = field(default=2, metadata={
        "help": "newest resumable checkpoints kept in <output_dir>/checkpoints"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the dataset (resnet_lite.data)"})
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={
        "help": "training augmentation (resnet_lite.data.augment)"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={
        "help": "the optimizer (resnet_lite.training.optim)"})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={
        "help": "the learning-rate schedule (resnet_lite.training.optim)"})
    ema: EMAConfig = field(default_factory=EMAConfig, metadata={
        "help": "evaluate (and save) an average of the weights (resnet_lite.training.ema)"})
    ddp: DDPConfig = field(default_factory=DDPConfig, metadata={
        "help": "DistributedDataParallel with more than one process (resnet_lite.training.engine)"})
    log_with: tuple[str, ...] = field(default=("wandb",), metadata={
        "help": f"experiment trackers, comma-separated or a list: {', '.join(TRACKERS)}; each gets the same scalars "
                "(W&B as wandb.mode says; resnet_lite.outputs.trackers)"})
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata={
        "help": "Weights & Biases logging (resnet_lite.outputs.tracking); a plain string is read as wandb.mode"})

    def __post_init__(self):
        for key in ("epochs", "batch_size", "eval_batch_size", "grad_accum", "eval_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise UserError(f"{key}={getattr(self, key)} must be >= 1")
        if self.checkpoint_every_steps < 0 or self.checkpoint_every_epochs < 0:
            raise UserError(f"checkpoint_every_steps={self.checkpoint_every_steps} and checkpoint_every_epochs="
                            f"{self.checkpoint_every_epochs} must be >= 0 (0 = none)")
        if self.profile < 0:
            raise UserError(f"profile={self.profile} must be >= 0 (steps to record; 0 = off)")
        if self.stop_check_every < 1:
            raise UserError(f"stop_check_every={self.stop_check_every} must be >= 1")
        if self.batch_size % self.grad_accum:
            raise UserError(f"batch_size={self.batch_size} does not split into grad_accum={self.grad_accum} "
                            f"micro-batches; use a batch_size divisible by {self.grad_accum}")
        if not 0.0 <= self.drop_rate < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"drop_rate={self.drop_rate} and label_smoothing={self.label_smoothing} must be in [0, 1)")
        check_tta(self.tta)
        self.log_with = check_log_with(self.log_with)
        if self.wandb.mode in ("online", "offline") and "wandb" not in self.log_with:
            raise UserError(f"wandb.mode={self.wandb.mode} but log_with={','.join(self.log_with) or '[]'} "
                            f"leaves W&B out; add wandb to --log-with, or drop the W&B mode")
        if self.compile and self.compile_backend != "inductor":
            import torch._dynamo

            backends = torch._dynamo.list_backends(exclude_tags=())
            if self.compile_backend not in backends:
                raise UserError(f"compile_backend={self.compile_backend!r} is not a torch.compile backend here; "
                                f"{did_you_mean(self.compile_backend, backends) or 'use inductor, aot_eager or eager'}")
        if self.pretrained_path and not self.pretrained:
            raise UserError(f"pretrained_path={self.pretrained_path} is read only with pretrained=true; set it, or "
                            f"use initial_checkpoint={self.pretrained_path}")
        if self.pretrained and self.initial_checkpoint:
            raise UserError("pretrained=true and initial_checkpoint both choose the starting weights; keep one")


# ---------------------------------------------------------------------------------------------- dict <-> dataclass


def _type_name(tp) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if typing.get_origin(tp) in (tuple, list):
        count = "" if Ellipsis in args else f"{len(args)} "
        return f"a list of {count}{_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value, tp, key):
    """`value` as type `tp`, or a UserError naming `key`, the expected type and the value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        spelled_none = isinstance(value, str) and value.lower() == "none" and type(None) in args and str not in args
        if value is None or spelled_none:
            if type(None) in args:
                return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except UserError:
                pass
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=f"{key}.")
    elif origin in (tuple, list):
        if isinstance(value, str) and args == (str, Ellipsis):  # a list of names, comma-separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        item_types = args if Ellipsis not in args else (args[0],) * len(value or ())
        if isinstance(value, (list, tuple)) and len(value) == len(item_types):
            items = [_convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types, strict=True))]
            return origin(items)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config field {key} has an unsupported type {tp}")
    raise UserError(f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__}); "
                    f"fix it in the config or override")


def _upgrade(data: dict) -> dict:
    """The settings of older configs, checkpoints and run directories under their names now: `wandb: MODE` (a string)
    is wandb.mode, `wandb_project` is wandb.project; the report's augmentation preset and schedule, once named `seed`
    and `seed_cosine`, are `report` and `report_cosine`."""
    data = _renamed(data, "augment", "preset", AUGMENT_RENAMED)
    data = _renamed(data, "schedule", "name", RENAMED_SCHEDULES)
    if not isinstance(data.get("wandb", {}), str) and "wandb_project" not in data:
        return data
    data = dict(data)
    wandb = data.pop("wandb", None)
    wandb = {"mode": wandb} if isinstance(wandb, str) else dict(wandb or {})
    if "wandb_project" in data:
        wandb.setdefault("project", data.pop("wandb_project"))
    data["wandb"] = wandb
    return data


def _renamed(data: dict, group: str, key: str, renamed: dict) -> dict:
    """`data` with data[group][key] under its new name when `renamed` has one (a copy; `data` as it is otherwise)."""
    value = data.get(group)
    if isinstance(value, dict) and isinstance(value.get(key), str) and value[key] in renamed:
        return dict(data, **{group: dict(value, **{key: renamed[value[key]]})})
    return data


def from_dict(cls, data: dict, prefix: str = ""):
    """An instance of dataclass `cls` from a nested dict; missing keys keep their defaults."""
    if not isinstance(data, dict):
        raise UserError(f"{prefix.rstrip('.') or 'the config'} must be a mapping of settings, got {data!r}")
    if cls is TrainConfig:
        data = _upgrade(data)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in known:
            raise UserError(f"unknown setting '{prefix}{key}'; {_suggest(prefix + str(key), cls)}")
        value = _convert(value, hints[key], prefix + key)
        choices = known[key].metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{prefix}{key}={value!r} is not one of {', '.join(choices)}; "
                            f"{did_you_mean(value, choices)}".rstrip("; "))
        values[key] = value
    return cls(**values)


def to_dict(obj) -> dict:
    """A dataclass as plain nested dicts and lists (tuples become lists), ready for YAML or JSON."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(obj))


def to_yaml(cfg) -> str:
    """The config as the YAML a run directory's config.yaml holds."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _paths(cls, prefix="") -> list[str]:
    """Every dotted setting of `cls`, nested dataclasses expanded."""
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out += _paths(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [prefix + f.name]
    return out


def _short_type(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _short_type(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (tuple, list):
        return f"[{', '.join('...' if a is Ellipsis else _short_type(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _yaml_value(value) -> str:
    """How a default reads in a YAML file or a KEY=VALUE override."""
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(map(_yaml_value, value))}]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def settings_help(width: int = 118) -> str:
    """Every dotted setting with its type, default and description, from the config dataclasses themselves."""
    rows = []  # (dotted name, "type = default", help)

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            help_text = f.metadata.get("help", "")
            if dataclasses.is_dataclass(hints[f.name]):
                rows.append((f"{prefix}{f.name}.*", "", help_text))
                walk(hints[f.name], f"{prefix}{f.name}.")
                continue
            kind = "|".join(map(str, f.metadata["choices"])) if "choices" in f.metadata else _short_type(hints[f.name])
            rows.append((prefix + f.name, f"{kind} = {_yaml_value(f.default)}", help_text))

    walk(TrainConfig, "")
    name_width = max(len(name) for name, _, _ in rows) + 2
    lines = textwrap.wrap("settings (type = default: meaning), each given as KEY=VALUE, --KEY=VALUE or --KEY VALUE "
                          "(--KEY alone sets a true/false one true; tyro's --optim.weight-decay works too), or as a "
                          "key of a --config YAML file:", width)
    for name, kind, help_text in rows:
        text = f"{kind}: {help_text}" if kind else help_text
        lines += textwrap.wrap(text, width, initial_indent=f"  {name:<{name_width}}",
                               subsequent_indent=" " * (name_width + 4), break_on_hyphens=False)
    return "\n".join(lines)


# Names other tools give these settings (timm's train.py flags, Lightning, Hugging Face's TrainingArguments), read
# as a user brings them (--learning-rate is the key learning_rate): the error names ours.
OTHER_TOOLS_NAMES = {
    "learning_rate": "optim.lr", "wd": "optim.weight_decay", "opt": "optim.name", "optimizer": "optim.name",
    "momentum": "optim.momentum", "max_epochs": "epochs", "num_epochs": "epochs", "num_train_epochs": "epochs",
    "bs": "batch_size", "per_device_train_batch_size": "batch_size", "validation_batch_size": "eval_batch_size",
    "smoothing": "label_smoothing", "mixup": "augment.mixup_alpha", "cutmix": "augment.cutmix_alpha",
    "mixup_prob": "augment.mix_prob", "mixup_switch_prob": "augment.switch_prob", "mixup_mode": "augment.mix_mode",
    "drop": "drop_rate", "model_ema": "ema.enabled", "model_ema_decay": "ema.decay", "sched": "schedule.name",
    "warmup_epochs": "schedule.warmup_epochs", "amp": "mixed_precision", "precision": "mixed_precision",
    "torchcompile": "compile", "experiment": "name",
    "log_wandb": "wandb.mode", "report_to": "log_with", "output": "output_dir", "data_dir": "data.root",
}


def _suggest(key: str, cls) -> str:
    """'did you mean ...?' for an unknown dotted key at the level of dataclass `cls`: what another tool's name means
    here (OTHER_TOOLS_NAMES), else the closest sibling name, else a setting elsewhere with the same last name ('lr' ->
    'optim.lr'), else the closest dotted setting."""
    if key in OTHER_TOOLS_NAMES:
        return f"did you mean '{OTHER_TOOLS_NAMES[key]}'?"
    parent, _, leaf = key.rpartition(".")
    parent = parent + "." if parent else ""
    siblings = [f.name for f in dataclasses.fields(cls)]
    paths = _paths(TrainConfig)
    same_leaf = [p for p in paths if p.rsplit(".", 1)[-1] == leaf and p != key]
    hint = did_you_mean(leaf, siblings).replace("'", f"'{parent}", 1) or did_you_mean(key, same_leaf, cutoff=0)
    if hint := hint or did_you_mean(key, paths):
        return hint
    return f"known settings{' under ' + parent.rstrip('.') if parent else ''}: {', '.join(siblings)}"


# ------------------------------------------------------------------------------------- YAML, presets, overrides


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: only true/false are booleans (YAML 1.1 reads yes/no/on/off too, so `mixed_precision: no`
    would be False) and 5e-4 is a number (1.1 wants 5.0e-4)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def read_yaml(path) -> dict:
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path} ({e})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({' '.join(str(e).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of settings (key: value), got {type(data).__name__}")
    return data


def _presets_dir():
    return shipped("configs")


def list_presets() -> list[str]:
    """Names of the presets shipped in the package (configs/*.yaml), model0..model8 in numeric order."""
    names = [p.name[:-5] for p in _presets_dir().iterdir() if p.name.endswith(".yaml")]
    return sorted(names, key=lambda n: (n.rstrip("0123456789"), int(n[len(n.rstrip("0123456789")):] or -1), n))


def read_preset(name: str) -> dict:
    presets = list_presets()
    if name not in presets:
        hint = did_you_mean(name, presets, n=3, cutoff=0.5)
        raise UserError(f"unknown preset '{name}'; {hint + ' ' if hint else ''}(presets: {', '.join(presets)}; "
                        f"`python -m resnet_lite.train --list`)")
    data = load_yaml(_presets_dir().joinpath(f"{name}.yaml").read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"preset {name} must hold a mapping of settings")
    return data


def parse_override(text: str) -> tuple[str, object]:
    """'optim.lr=0.05' -> ('optim.lr', 0.05); the value is read as YAML 1.2 (numbers, true/false, null, [lists])."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"cannot read override '{text}'; write KEY=VALUE with a dotted key, e.g. optim.lr=0.05")
    try:
        return key, load_yaml(value)
    except yaml.YAMLError:
        return key, value


def _setting_type(key: str):
    """The type of the dotted setting `key`, or None when there is no such setting."""
    cls = TrainConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls) or part not in (hints := typing.get_type_hints(cls)):
            return None
        cls = hints[part]
    return None if dataclasses.is_dataclass(cls) else cls


def _is_bool(tp) -> bool:
    return tp is bool or bool in typing.get_args(tp)


def settings_argv(argv, options) -> list[str]:
    """`argv` with settings written as flags, the way LightningCLI/jsonargparse, tyro and `wandb agent` write them,
    turned into the KEY=VALUE overrides they mean: --optim.lr=0.01 and --optim.lr 0.01 (tyro's hyphens too:
    --optim.weight-decay 5e-4); a true/false setting alone is true (--ema.enabled), and takes a following true or
    false as its value. A word is a setting when it is not one of the parser's `options` and names one, or looks
    like one (dotted, with an underscore, or another tool's name for one: a misspelt one then gets the did-you-mean of
    an override). `--` ends it."""
    out: list[str] = []
    words, i = list(argv), 0
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            return out + words[i - 1:]
        flag, eq, value = word.partition("=")
        key = flag[2:].replace("-", "_")
        if not word.startswith("--") or flag in options or not (key in top or "." in key or "_" in key
                                                                or key in OTHER_TOOLS_NAMES):
            out.append(word)
            continue
        tp = _setting_type(key)
        if not eq:
            following = words[i] if i < len(words) else None
            if tp is not None and _is_bool(tp):
                takes = following is not None and following.lower() in ("true", "false")
                value = following if takes else "true"
            elif tp is None and (following is None or following.startswith("--")):
                takes, value = False, "true"  # no such setting: the override's did-you-mean says which one is meant
            elif following is None or following.startswith("--"):
                raise UserError(f"{flag} needs a value; write {flag}=VALUE or {flag} VALUE")
            else:
                takes, value = True, following
            i += takes
        out.append(f"{key}={value}")
    return out


def _nest(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"'{key}' sets a value under '{p}', which is not a group of settings")
        node[leaf] = value
    return out


def _merge(base: dict, layer: dict, source: str, prefix: str = "", cls=TrainConfig) -> dict:
    """`layer` deep-merged over `base`; keys are checked against `cls` so errors can name the layer's source."""
    if not isinstance(layer, dict):
        raise UserError(f"{prefix.rstrip('.') or 'the config'} in {source} must be a mapping, got {layer!r}")
    if cls is TrainConfig:
        base, layer = _upgrade(base), _upgrade(layer)
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for key, value in layer.items():
        if key not in hints:
            raise UserError(f"unknown setting '{prefix}{key}' in {source}; {_suggest(prefix + str(key), cls)}")
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            out[key] = _merge(out.get(key) or {}, value, source, f"{prefix}{key}.", hints[key])
        else:
            out[key] = value
    return out


def resolve_config(variant: str | None = None, file=None, flags: dict | None = None,
                   overrides: Sequence[str] = (), base: dict | None = None) -> TrainConfig:
    """The TrainConfig of: `base` (defaults, or a resumed run's config) < preset < file < flags < overrides.

    flags: dotted key -> value, from the command line's named flags (None values are skipped)."""
    merged = dict(base or {})
    if variant:
        merged = _merge(merged, read_preset(variant), f"preset {variant}")
    if file:
        merged = _merge(merged, read_yaml(file), str(file))
    merged = _merge(merged, _nest({k: v for k, v in (flags or {}).items() if v is not None}), "the command line")
    merged = _merge(merged, _nest(dict(parse_override(o) for o in overrides)), "the overrides")
    if variant and merged.get("name") is None:
        merged["name"] = variant
    return from_dict(TrainConfig, merged)
