"""Starting from weights instead of from scratch: timm's pretrained mechanisms, or an initial checkpoint.

    model, origin = initial_model("resnet18", num_classes=10, pretrained=True)                  # timm's hub/url weights
    model, origin = initial_model("lite_r4b2", 10, pretrained=True, pretrained_path="w.safetensors")  # timm loads it
    model, origin = initial_model("lite_r4b2", 10, initial_checkpoint="runs/x")   # a run's weights: its model_last

Files are read by resnet_lite.outputs.weights.read_state_dict (as timm's load_state_dict reads them, but torch files
always with weights_only=True), so a report-notebook best_model.pth, a timm or resnet_lite checkpoint and a plain
state_dict all load, and a pickle that would run code is refused, not run; timm is handed the tensors, never the
file. When only the classifier (timm's get_classifier) differs, as with another
number of classes, the model keeps a new one (reset_classifier); any other difference is a UserError naming the
first key that differs. `origin` says where the weights came from, for the run's summary.
"""
import hashlib
from pathlib import Path

import timm
import torch

from ..errors import UserError, first_line
from ..outputs.rundir import weights_file
from ..outputs.weights import read_state_dict
from .lite import create_model
from .tools import classifier_prefixes

__all__ = ["initial_model", "resolve_weights_file", "fit_state_dict", "pretrained_source"]

def resolve_weights_file(path) -> Path:
    """The file `path` names: itself, a run directory's weights (model_last) or an exported folder's."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"initial weights {path} do not exist; give a .safetensors or .pth file or a run directory")
    return weights_file(path)


def fit_state_dict(model: torch.nn.Module, state_dict: dict, source, name: str) -> int | None:
    """Check `state_dict` against `model`: None when it loads as it is; the weights' number of classes when only the
    classifier differs (0: they have none). Anything else: a UserError naming the first key that differs."""
    head = classifier_prefixes(model)
    ours = model.state_dict()
    for key, tensor in ours.items():
        if key.startswith(head):
            continue
        if key not in state_dict:
            raise UserError(f"{source} does not fit {name}: it has no {key}; give weights of {name}")
        if state_dict[key].shape != tensor.shape:
            raise UserError(f"{source} does not fit {name}: {key} is {list(state_dict[key].shape)} there, "
                            f"{list(tensor.shape)} in the model; give weights of {name}")
    for key in state_dict:
        if key not in ours and not key.startswith(head):
            raise UserError(f"{source} does not fit {name}: {key} is not in the model; give weights of {name}")
    theirs = {k: v.shape for k, v in state_dict.items() if k.startswith(head)}
    if theirs == {k: v.shape for k, v in ours.items() if k.startswith(head)}:
        return None
    weight = next((shape for key, shape in theirs.items() if key.endswith(".weight")), None)
    return weight[0] if weight is not None else 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()  # hashlib.file_digest would be shorter, but is Python 3.11+ and we support 3.10
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pretrained_source(name: str, pretrained_path=None) -> str:
    """Where pretrained=true would load `name`'s weights from; a UserError when nowhere."""
    if pretrained_path:
        return str(resolve_weights_file(pretrained_path))
    if name.startswith(("hf-hub:", "local-dir:")):
        return name
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False) if timm.is_model(name) else None
    # timm's own order: a file (resnet_lite's published weights are package data) before the Hub, the Hub before a url
    source = cfg and (cfg.file or (f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url))
    if not source:
        raise UserError(f"no pretrained weights are published for {name}; give pretrained_path=FILE "
                        f"(--pretrained-path), or initial_checkpoint=RUN_DIR_OR_FILE instead of pretrained")
    assert isinstance(source, str), source  # timm's url may be typed a (url, file) pair; no registered model uses one
    return source


def _note(classes: int | None, num_classes: int, head: tuple) -> str:
    if classes is None:
        return "classifier loaded"
    had = f"the weights have {classes} classes" if classes else "the weights have no classifier"
    return f"classifier {', '.join(h.rstrip('.') for h in head)} re-initialised for {num_classes} classes ({had})"


def initial_model(name: str, num_classes: int, pretrained: bool = False, pretrained_path=None,
                  initial_checkpoint=None, **kwargs) -> tuple[torch.nn.Module, dict | None]:
    """(model, origin): `name` for `num_classes` classes, from pretrained weights or an initial checkpoint when asked.
    origin: None (random init), else {"source", "sha256" (files), "classifier_reset", "note"}."""
    if initial_checkpoint:
        path = resolve_weights_file(initial_checkpoint)
        state_dict = read_state_dict(path)
        model = create_model(name, num_classes=num_classes, **kwargs)
        classes = fit_state_dict(model, state_dict, path, name)
        head = classifier_prefixes(model)
        model.load_state_dict(state_dict if classes is None else
                              {k: v for k, v in state_dict.items() if not k.startswith(head)}, strict=classes is None)
        if classes is not None:
            model.reset_classifier(num_classes)
        return model, _origin(str(path), _sha256(path), classes, num_classes, head)
    if not pretrained:
        return create_model(name, num_classes=num_classes, **kwargs), None
    source = pretrained_source(name, pretrained_path)
    overlay, classes = None, None
    if pretrained_path:  # checked here, since timm loads a file without a matching classifier non-strictly
        with torch.device("meta"):
            probe = create_model(name, num_classes=num_classes, **kwargs)
        state_dict = read_state_dict(Path(source))
        classes = fit_state_dict(probe, state_dict, source, name)
        # the tensors, so that timm does not read the file again in its own way; the file's own class count, so that
        # timm adapts the classifier exactly when it differs
        overlay = dict(file=source, state_dict=state_dict, num_classes=num_classes if classes is None else classes)
    try:
        model = create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **kwargs)
    except UserError:
        raise
    except Exception as e:  # no network, no such hub repository, weights of another architecture
        reason = first_line(e)
        raise UserError(f"cannot load the pretrained weights of {name} from {source} ({type(e).__name__}: {reason}); "
                        f"check the network or the name, or give pretrained_path=FILE") from None
    if pretrained_path:
        model.pretrained_cfg.pop("state_dict", None)  # timm keeps the overlay: a second copy of every weight
    else:
        published = model.pretrained_cfg.get("num_classes")
        classes = None if published in (None, num_classes) else published
    sha = _sha256(Path(source)) if pretrained_path or Path(source).is_file() else None  # a file: its hash
    return model, _origin(source, sha, classes, num_classes, classifier_prefixes(model))


def _origin(source: str, sha256: str | None, classes: int | None, num_classes: int, head: tuple) -> dict:
    origin = {"source": source, "classifier_reset": classes is not None, "note": _note(classes, num_classes, head)}
    return origin | ({"sha256": sha256} if sha256 else {})
