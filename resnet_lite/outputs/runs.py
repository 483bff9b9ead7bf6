"""What a finished run hands to evaluate, predict and export: its model with weights, preprocessing and config.

    run = load_run("runs/model5-20250101-120000")            # model_last.safetensors of a run directory
    run = load_run("runs/m5/model_best.safetensors")         # a weights file (its run's config.yaml when beside it)
    run = load_run("exports/m5")                              # a timm-style folder from `export --format safetensors`
    logits = run.model(run.normalize(uint8_images))

Weights files carry their own description (resnet_lite.outputs.checkpoint.save_weights metadata: model, num_classes,
in_chans, image_size, classes, mean, std), so a file alone is enough to rebuild the model and its preprocessing. That
description is the file's, so it is checked before anything is built: a registered model name only (never hf-hub: or
local-dir:, which would download or read another folder), and sizes within META_LIMITS.
"""
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from ..config import TrainConfig, from_dict, read_yaml
from ..data.images import build_normalize
from ..errors import UserError, first_line
from ..models.lite import create_model
from .rundir import CONFIG, RUN_OR_WEIGHTS, SUMMARY, weights_file
from .weights import load_weights

__all__ = ["TrainedModel", "load_run"]

_META_KEYS = ("model", "num_classes", "in_chans", "classes", "mean", "std")
# What metadata may ask for: ImageNet-21k has 21,841 classes; a crafted 10**9 would be a 1 TB classifier
META_LIMITS = {"num_classes": (1, 100_000), "in_chans": (1, 64), "image_size": (1, 4096), "crop_pct": (0.5, 1.0)}


@dataclass
class TrainedModel:
    model: torch.nn.Module  # in eval mode, on the CPU
    meta: dict  # model, num_classes, in_chans, image_size, classes, mean, std (and epoch for a run's weights)
    weights: Path
    run_dir: Path | None  # the training run the weights come from, when they sit in one
    config: TrainConfig | None  # that run's resolved config.yaml
    summary: dict | None  # that run's summary.json, once it finished
    normalize: Callable  # uint8 N x 3 x H x W (any device) -> the float input the model was trained on

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def image_size(self) -> int | None:
        return self.meta.get("image_size")

    @property
    def tta(self) -> int:
        """The test-time augmentation level the run evaluated with (0 when its config is not at hand)."""
        return self.config.tta if self.config else 0


def _timm_folder(folder: Path) -> tuple[dict, dict]:
    """(state_dict, meta) of a timm-style export folder: config.json + model.safetensors."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
        pre = cfg["pretrained_cfg"]
        meta = {"model": cfg["architecture"], "num_classes": cfg["num_classes"], "in_chans": pre["input_size"][0],
                "image_size": pre["input_size"][-1], "classes": cfg.get("label_names") or
                [str(i) for i in range(cfg["num_classes"])], "mean": pre["mean"], "std": pre["std"],
                "crop_pct": pre.get("crop_pct") or 1.0}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"{folder / 'config.json'} is not a timm model config ({type(e).__name__}: {e}); "
                        f"give {RUN_OR_WEIGHTS}") from None
    state_dict, _ = load_weights(folder / "model.safetensors")
    return state_dict, meta


def _check_meta(weights: Path, meta: dict) -> None:
    name = meta["model"]
    if not isinstance(name, str) or not timm.is_model(name):
        raise UserError(f"{weights} names the model {name!r:.100}, which is not a registered model (a weights file may "
                        f"not name hf-hub: or local-dir: models); give {RUN_OR_WEIGHTS}")
    for key, (low, high) in META_LIMITS.items():
        value = meta.get(key)
        # optional: predict asks for image_size when it needs it
        if value is None and key in ("image_size", "crop_pct"):
            continue
        number = (int, float) if isinstance(high, float) else int
        if isinstance(value, bool) or not isinstance(value, number) or not low <= value <= high:
            raise UserError(f"{weights} has {key} {value!r:.40} in its metadata, outside {low}..{high}; give "
                            f"{RUN_OR_WEIGHTS}")


def load_run(path, which: str = "last") -> TrainedModel:
    """The model and preprocessing of `path`: a run directory (its model_<which>.safetensors), a weights file, or a
    timm-style export folder. The run's config and summary come along when the weights sit in a run directory."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        weights = path / "model.safetensors"
        state_dict, meta = _timm_folder(path)
    else:
        weights = weights_file(path, which)
        if weights.suffix != ".safetensors":
            checkpoint = weights.suffix in (".pt", ".pth")
            hint = " (a training checkpoint: give its run directory instead)" if checkpoint else ""
            raise UserError(f"{weights} is not a .safetensors weights file{hint}; give {RUN_OR_WEIGHTS}")
        state_dict, meta = load_weights(weights)
        if missing := [k for k in _META_KEYS if k not in meta]:
            raise UserError(f"{weights} lacks the metadata {', '.join(missing)} that resnet_lite.train writes; "
                            f"give {RUN_OR_WEIGHTS}")
    _check_meta(weights, meta)
    model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"])
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(f"{weights} does not fit {meta['model']} ({first_line(e)}); "
                        f"the file's metadata and tensors disagree") from None
    model.eval()

    run_dir, config, summary = weights.parent, None, None
    if (run_dir / CONFIG).is_file():
        config = from_dict(TrainConfig, read_yaml(run_dir / CONFIG))
        if (run_dir / SUMMARY).is_file():
            summary = json.loads((run_dir / SUMMARY).read_text())
    else:
        run_dir = None
    return TrainedModel(model, meta, weights, run_dir, config, summary, build_normalize(meta["mean"], meta["std"]))
