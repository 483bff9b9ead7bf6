"""The report's lightweight ResNets, registered in timm's model registry.

A 5x5 stem, stages of two-conv residual blocks with a 1x1 conv + BN shortcut where the shape changes,
global average pooling and a linear head (../shared/seed/SEED.md). Module names follow the report's
notebook (`conv1, bn1, layer1.., gap, fc`), so its `best_model.pth` loads as it is.

    python -m resnet_lite.models      # the family at a glance

Published weights are package data: weights/published.json names each file in weights/ with what it measured
(written by benchmarks/publish_weights.py); each becomes a pretrained tag of its model in timm's registry, the
model's default, so `create_model("lite_r4b2", pretrained=True)` loads it offline (`published_weights()` lists them).
"""
import json
import warnings
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..errors import UserError, did_you_mean, first_line

__all__ = ["LiteResNet", "create_model", "list_models", "convert_notebook_state_dict", "published_weights",
           "WEIGHTS_DIR"]

# Computed on the CIFAR-10 training set (the report's notebook prints 0.49139968, 0.48215841, 0.44653091 / ...).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

def conv3x3(in_chs, out_chs, stride=1, **dd):
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False, **dd)


def conv1x1(in_chs, out_chs, stride=1, **dd):
    return nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False, **dd)


class LiteBlock(nn.Module):
    """The notebook's ModifiedResidualBlock: conv-bn-relu-conv-bn plus a shortcut, then ReLU."""

    def __init__(self, in_chs, out_chs, stride=1, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = conv3x3(in_chs, out_chs, stride, **dd)
        self.bn1 = nn.BatchNorm2d(out_chs, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_chs, out_chs, **dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(conv1x1(in_chs, out_chs, stride, **dd), nn.BatchNorm2d(out_chs, **dd))
        else:
            self.shortcut = nn.Sequential()  # an empty Sequential, as the notebook wrote it: no keys, identity

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class LiteResNet(nn.Module):
    """A stem, `len(layers)` residual stages and a linear head.

    Args:
        layers: blocks per stage.
        widths: output channels per stage.
        strides: stride of each stage's first block.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input image channels.
        drop_rate: dropout before the classifier.
        global_pool: timm's pooling type ('avg', 'max', 'avgmax', 'catavgmax'; '' for none, with num_classes=0).
        stem_width, stem_kernel: the notebook's stem is a 5x5 conv to 32 channels.
        device, dtype: where and in what precision the parameters are created (timm's factory kwargs).
    """

    def __init__(self, layers, widths, strides, num_classes=10, in_chans=3, drop_rate=0.0,
                 stem_width=32, stem_kernel=5, global_pool="avg", device=None, dtype=None):
        super().__init__()
        if not len(layers) == len(widths) == len(strides):
            raise ValueError(f"layers, widths and strides need one entry per stage, got {layers}, {widths}, {strides}")
        if stem_kernel % 2 != 1:
            raise ValueError(f"stem_kernel must be odd to keep the spatial size, got {stem_kernel}")
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, stem_width, stem_kernel, stride=1, padding=stem_kernel // 2, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(stem_width, **dd)
        self.relu = nn.ReLU(inplace=True)
        in_chs, reduction = stem_width, 1
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module="relu")]
        self.stage_names = []
        for i, (n, width, stride) in enumerate(zip(layers, widths, strides, strict=True), start=1):
            blocks = [LiteBlock(in_chs, width, stride, **dd)] + [LiteBlock(width, width, **dd) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_chs, reduction = width, reduction * stride
            self.stage_names.append(f"layer{i}")
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"layer{i}"))
        self.num_features = in_chs
        self.gap, self.fc = self._head(num_classes, global_pool, **dd)

        # The notebook's init: He-normal (fan_out) convs, unit BN; the Linear keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _head(self, num_classes, global_pool, device=None, dtype=None):
        if not global_pool and num_classes > 0:
            raise ValueError(f"global_pool='' leaves a feature map, which needs num_classes=0, got {num_classes}")
        # 'avg' is AdaptiveAvgPool2d(1) + flatten, exactly the notebook's gap, so its outputs stay bit-identical
        gap = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_hidden_size = self.num_features * gap.feat_mult()
        fc = (nn.Linear(self.head_hidden_size, num_classes, device=device, dtype=dtype) if num_classes > 0
              else nn.Identity())
        return gap, fc

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self):
        # nothing beyond what timm's optimizer factory already exempts (BN and biases, every 1-D parameter)
        return set()

    @torch.jit.ignore
    def get_classifier(self):
        return self.fc

    def reset_classifier(self, num_classes, global_pool=None):
        """A new head for `num_classes` (0: none), on the device and in the dtype of the rest of the model;
        `global_pool` None keeps the current pooling."""
        self.num_classes = num_classes
        global_pool = self.gap.pool_type if global_pool is None else global_pool
        self.gap, self.fc = self._head(num_classes, global_pool, device=self.conv1.weight.device,
                                       dtype=self.conv1.weight.dtype)
        self.gap.train(self.training)
        self.fc.train(self.training)

    def forward_features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        # The stages stay top-level attributes (layer1..N: the notebook's state_dict keys); TorchScript can loop over
        # named_children() but not over getattr(self, name), so the loop picks them out by name.
        for name, stage in self.named_children():
            if name in self.stage_names:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
                else:
                    x = stage(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.gap(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs):
    return {
        "url": "", "num_classes": 10, "input_size": (3, 32, 32), "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "first_conv": "conv1", "classifier": "fc",
        "license": "mit", **kwargs,
    }


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# {"lite_r4b2.fast94_c10jpeg": {"file": ..., "test_acc": ..., ...}}: publish_weights.py writes it
REGISTRY = "published.json"


def published_weights(model: str | None = None) -> dict:
    """The weights this package publishes, {"<model>.<tag>": entry} (entry["path"]: the file), all or `model`'s."""
    path = WEIGHTS_DIR / REGISTRY
    if not path.is_file():
        return {}
    try:
        registry = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warnings.warn(f"{path} cannot be read ({e}): no published weights", stacklevel=2)
        return {}
    return {name: dict(entry, path=str(WEIGHTS_DIR / entry["file"])) for name, entry in registry.items()
            if model is None or name.split(".", 1)[0] == model}


def _published_cfg(base: dict, entry: dict) -> dict:
    """timm's pretrained_cfg of a published entry: the file in the package first (timm loads `file` before it would
    try `hf_hub_id`, the name a Hub copy would take), its classes, normalisation and what it measured."""
    return dict(base, file=entry["path"], hf_hub_id=entry.get("hf_hub_id"), num_classes=entry["num_classes"],
                label_names=tuple(entry["label_names"]), mean=tuple(entry["mean"]), std=tuple(entry["std"]),
                input_size=tuple(entry["input_size"]), description=entry.get("description"),
                notes=tuple(entry.get("notes", ())), origin_url=entry.get("origin_url"))


_BASE_CFGS = {
    "lite_r4b2": _cfg(pool_size=(4, 4)),
    "lite_r4b3": _cfg(pool_size=(4, 4)),
    "lite_r5b2": _cfg(pool_size=(2, 2)),
}
# published tags first: timm makes a tag with weights its model's default
default_cfgs = generate_default_cfgs({
    **{name: _published_cfg(_BASE_CFGS[name.split(".", 1)[0]], entry) for name, entry in published_weights().items()
       if name.split(".", 1)[0] in _BASE_CFGS},
    **_BASE_CFGS,
})


def _weights_given(kwargs):
    """True when the caller's pretrained_cfg (or its overlay) names weights, as timm's `local-dir:`/`hf-hub:` do."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay"):
        cfg = kwargs.get(key)
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg if isinstance(cfg, dict) else {})
        if any(cfg.get(k) for k in ("file", "state_dict", "hf_hub_id", "url")):
            return True
    return False


def _registered_weights(variant, kwargs) -> bool:
    """True when the registered pretrained cfg that timm will use (the tag asked for, else the default) has weights;
    a UserError when they are published but their file is missing from the package."""
    tag = kwargs.get("pretrained_cfg")
    if tag is not None and not isinstance(tag, str):
        return False
    cfg = timm.models.get_pretrained_cfg(f"{variant}.{tag}" if tag else variant)
    if cfg is None or not cfg.has_weights:
        return False
    if cfg.file and not Path(cfg.file).is_file():
        raise UserError(f"the published weights of {variant} ({cfg.tag}) should be at {cfg.file}, which is missing; "
                        f"reinstall resnet_lite, or load your own: pretrained_cfg_overlay=dict(file=...)")
    return True


def _create_lite_resnet(variant, pretrained=False, **kwargs):
    if pretrained and not _weights_given(kwargs) and not _registered_weights(variant, kwargs):
        raise UserError(f"no pretrained weights are published for {variant}; train one with "
                        f"`python -m resnet_lite.train`, or load your own: pretrained_cfg_overlay=dict(file=...) "
                        f"(train's --pretrained-path) or checkpoint_path=...")
    # features_only: every level (stem + each stage) by default; timm's default (0..4) would drop lite_r5b2's last
    feature_cfg = dict(out_indices=tuple(range(len(kwargs["layers"]) + 1)))
    return build_model_with_cfg(LiteResNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


@register_model
def lite_r4b2(pretrained=False, **kwargs) -> LiteResNet:
    """The report's model 5 (91.47%): four stages of two blocks, 2,799,146 parameters."""
    args = dict(layers=(2, 2, 2, 2), widths=(32, 64, 128, 256), strides=(1, 2, 2, 2))
    return _create_lite_resnet("lite_r4b2", pretrained, **dict(args, **kwargs))


@register_model
def lite_r4b3(pretrained=False, **kwargs) -> LiteResNet:
    """The report's model 8: four stages of three blocks, 4,367,786 parameters."""
    args = dict(layers=(3, 3, 3, 3), widths=(32, 64, 128, 256), strides=(1, 2, 2, 2))
    return _create_lite_resnet("lite_r4b3", pretrained, **dict(args, **kwargs))


@register_model
def lite_r5b2(pretrained=False, **kwargs) -> LiteResNet:
    """The report's models 0-4, 6, 7: five stages, the last of three blocks, 4,587,306 parameters."""
    args = dict(layers=(2, 2, 2, 2, 3), widths=(32, 64, 128, 128, 256), strides=(1, 2, 2, 2, 2))
    return _create_lite_resnet("lite_r5b2", pretrained, **dict(args, **kwargs))


def list_models(pattern="lite_*"):
    """Registered model names matching `pattern` (timm's registry; the default lists this family)."""
    return timm.list_models(pattern)


def create_model(name, pretrained=False, **kwargs):
    """`timm.create_model` with a one-line error for an unknown name. kwargs: num_classes, in_chans, drop_rate, ...
    Names may also be timm's `hf-hub:ORG/NAME` and `local-dir:FOLDER` (a model described by its config.json)."""
    if name.startswith(("hf-hub:", "local-dir:")):
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except UserError:
            raise
        except Exception as e:  # no network, no such repository or folder, a config.json timm cannot read
            reason = first_line(e)
            raise UserError(f"cannot create model {name} ({type(e).__name__}: {reason}); check the name, the "
                            f"folder or the network") from None
    if not timm.is_model(name):
        hint = (did_you_mean(name, list_models("lite_*"), n=3, cutoff=0.3)
                or did_you_mean(name, timm.list_models(), n=3)
                or "see `python -m resnet_lite.models`")
        raise UserError(f"unknown model {name!r}; {hint} (registered lite models: {', '.join(list_models())})")
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def convert_notebook_state_dict(state_dict):
    """Map a state_dict saved by the report's notebook (or a wrapped/compiled copy) onto LiteResNet's keys.

    Accepts a plain state_dict, or a checkpoint dict holding one under 'state_dict' / 'model'. Strips the
    `module.` prefix of DataParallel/DDP and the `_orig_mod.` prefix of torch.compile.
    """
    for key in ("state_dict", "model"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k.replace("._orig_mod.", ".")] = v
    return out


convert_seed_state_dict = convert_notebook_state_dict  # its earlier name: code written against it still runs
