"""Ship a trained model: ONNX, TorchScript, or a timm folder (config.json + model.safetensors); each one checked.

    python -m resnet_lite.export runs/m5 --format onnx --output m5.onnx
    python -m resnet_lite.export runs/m5 --format torchscript --output m5.pt
    python -m resnet_lite.export runs/m5 --format safetensors --output exports/m5
        then: timm.create_model("local-dir:exports/m5", pretrained=True)

Every format takes the normalised image, float32 N x 3 x H x W ((pixel / 255 - mean) / std, mean/std of the training
data), and returns N x num_classes logits of the plain model (no test-time augmentation). After writing, the file is
loaded back (onnxruntime, torch.jit.load, timm) and its outputs are compared with PyTorch's on a batch of another size;
only then is it moved into place.
ONNX has a dynamic batch dimension and needs the optional extra: pip install 'resnet_lite[export]' (onnx,
onnxruntime, onnxscript; onnxscript selects torch's torch.export-based exporter, without it the TorchScript-based one
is used).
Model name, classes, mean, std and input size travel inside each file: ONNX metadata_props, the TorchScript archive's
extra file resnet_lite.json, the timm config.json (label_names, pretrained_cfg).
"""
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from .cli import ArgumentParser, cli
from .errors import UserError
from .outputs.files import staged
from .outputs.rundir import RUN_OR_WEIGHTS, WEIGHTS
from .outputs.runs import TrainedModel, load_run

__all__ = ["FORMATS", "export_onnx", "export_torchscript", "export_timm", "export", "main"]

FORMATS = ("onnx", "torchscript", "safetensors")
TRACE_BATCH, CHECK_BATCH = 2, 3  # the check uses another batch size, so a batch dimension fixed at export would show
# max |exported - pytorch| per logit, relative to the logits' largest magnitude (float32 kernels differ)
TOLERANCE = 1e-4


def _sample(run: TrainedModel, batch: int) -> torch.Tensor:
    """Normalised images of random pixels, the kind of input the model sees."""
    size = run.image_size or 32
    g = torch.Generator().manual_seed(batch)
    pixels = torch.randint(0, 256, (batch, run.meta["in_chans"], size, size), dtype=torch.uint8, generator=g)
    return run.normalize(pixels)


def _check(name: str, got: torch.Tensor, expected: torch.Tensor) -> float:
    diff = (got.float() - expected).abs().max().item()
    if got.shape != expected.shape or diff > TOLERANCE * max(1.0, expected.abs().max().item()):
        raise RuntimeError(f"the {name} export gives outputs {tuple(got.shape)} differing from PyTorch's "
                           f"{tuple(expected.shape)} by up to {diff:.3g}; nothing was written")
    return diff


def _description(run: TrainedModel) -> dict:
    keys = ("model", "num_classes", "in_chans", "image_size", "classes", "mean", "std")
    return {k: run.meta.get(k) for k in keys}


def export_onnx(run: TrainedModel, path, dynamo: bool | None = None) -> float:
    """ONNX file with inputs `image` (batch dimension `batch`) and outputs `logits`; returns the max difference to
    PyTorch measured with onnxruntime. dynamo: torch.export-based exporter (default: when onnxscript is installed)."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxruntime: pip install 'resnet_lite[export]'") from None
    dynamo = importlib.util.find_spec("onnxscript") is not None if dynamo is None else dynamo
    path, model = Path(path), run.model.cpu().eval()
    with staged(path) as tmp:
        names: dict[str, Any] = dict(input_names=["image"], output_names=["logits"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter announces its end
            if dynamo:
                torch.onnx.export(model, (_sample(run, TRACE_BATCH),), str(tmp), dynamo=True, external_data=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False, **names)
            else:
                torch.onnx.export(model, (_sample(run, TRACE_BATCH),), str(tmp), dynamo=False, **names,
                                  dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        proto = onnx.load(str(tmp))
        ours = {key: json.dumps(value) for key, value in _description(run).items()}
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **ours})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        x = _sample(run, CHECK_BATCH)
        with torch.no_grad():
            diff = _check("ONNX", torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), model(x))
    return diff


def export_torchscript(run: TrainedModel, path) -> float:
    """Traced TorchScript archive: tracing takes any timm model a run may train, scriptable or not, and these
    forwards have no data-dependent branches, so it records all of them. Returns the max difference after
    torch.jit.load."""
    path, model = Path(path), run.model.cpu().eval()
    with staged(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            traced = torch.jit.trace(model, _sample(run, TRACE_BATCH))
            torch.jit.save(traced, str(tmp), _extra_files={"resnet_lite.json": json.dumps(_description(run))})
            extra = {"resnet_lite.json": ""}
            loaded = torch.jit.load(str(tmp), map_location="cpu", _extra_files=extra)
            x = _sample(run, CHECK_BATCH)
            diff = _check("TorchScript", loaded(x), model(x))
        if json.loads(extra["resnet_lite.json"])["classes"] != run.classes:
            raise RuntimeError("the TorchScript archive lost its resnet_lite.json; nothing was written")
    return diff


def export_timm(run: TrainedModel, folder) -> float:
    """timm folder: config.json (architecture, num_classes, num_features, label_names, pretrained_cfg with input_size,
    mean, std) and model.safetensors, written by timm's own save_for_hf, so timm.create_model("local-dir:FOLDER",
    pretrained=True) rebuilds it. Checked by reading it back with timm's config parser and checkpoint loader."""
    import timm
    from timm.models import save_for_hf
    from timm.models._hub import load_model_config_from_path  # what create_model('local-dir:...') reads

    folder, model = Path(folder), run.model.cpu().eval()
    ours = {"config.json", "model.safetensors"}
    if folder.exists() and not (folder.is_dir() and {p.name for p in folder.iterdir()} <= ours):
        raise UserError(f"{folder} exists and is not an earlier export (config.json + model.safetensors); "
                        f"choose another --output")
    size = run.image_size or 32
    with staged(folder, folder=True) as tmp:
        save_for_hf(model, tmp, model_config={"label_names": run.classes}, safe_serialization=True,
                    data_config={"input_size": (run.meta["in_chans"], size, size), "mean": tuple(run.meta["mean"]),
                                 "std": tuple(run.meta["std"]), "interpolation": "bilinear", "crop_pct": 1.0})
        for f in tmp.iterdir():
            f.chmod(tmp.stat().st_mode & 0o666)  # safetensors writes 0600
        cfg, name, _ = load_model_config_from_path(tmp)
        if (name, cfg["num_classes"], list(cfg["mean"]), cfg["label_names"]) != (
                run.meta["model"], len(run.classes), list(run.meta["mean"]), run.classes):
            raise RuntimeError(f"timm reads {tmp / 'config.json'} differently from what was meant; nothing was written")
        rebuilt = timm.create_model(name, num_classes=cfg["num_classes"], in_chans=cfg["input_size"][0],
                                    checkpoint_path=str(tmp / "model.safetensors")).eval()
        x = _sample(run, CHECK_BATCH)
        with torch.no_grad():
            diff = _check("timm", rebuilt(x), model(x))
    return diff


def export(path, fmt: str, output, weights: str = "last", overwrite: bool = False) -> tuple[Path, float]:
    """Export the model at `path` (see resnet_lite.outputs.runs.load_run) as `fmt` to `output`; (output, max
    difference).
    An existing `output` is replaced only with `overwrite` (a typo must not destroy model_last.safetensors)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt} is not one of {', '.join(FORMATS)}")
    if Path(output).exists() and not overwrite:
        raise UserError(f"{output} exists; pass --overwrite to replace it, or choose another --output")
    run = load_run(path, weights)
    writer = {"onnx": export_onnx, "torchscript": export_torchscript, "safetensors": export_timm}[fmt]
    return Path(output), writer(run, output)


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m resnet_lite.export", __doc__)
    p.add_argument("path", metavar="RUN_DIR_OR_WEIGHTS", help=RUN_OR_WEIGHTS)
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx: a .onnx file; torchscript: a .pt archive; safetensors: a timm folder")
    p.add_argument("--output", required=True, metavar="PATH",
                   help="the file (onnx, torchscript) or folder (safetensors)")
    p.add_argument("--weights", choices=list(WEIGHTS), default="last",
                   help="which weights of a run directory (default last)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --output if it exists (without it, that is an error)")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    out, diff = export(args.path, args.format, args.output, args.weights, args.overwrite)
    note = ("; timm loads it only after `import resnet_lite` (no plugin discovery)"
            if args.format == "safetensors" else "")
    print(f"wrote {out} ({args.format}); reloaded, its outputs match PyTorch's within {diff:.2g}{note}")
    return 0


if __name__ == "__main__":
    main()
