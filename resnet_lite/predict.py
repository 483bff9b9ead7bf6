"""Classify image files with a trained model: the top-k classes and their probabilities.

    python -m resnet_lite.predict runs/m5 cat.jpg dog.png           # a table
    python -m resnet_lite.predict runs/m5 photos/ --top-k 3 --json  # every image under photos/, as JSON on stdout

Any format and size PIL reads: each image is converted to RGB, its shorter side resized to the model's input size with
PIL's bilinear filter and the centre cut out, as timm's resolve_data_config + eval transform do (crop_pct 1, or a timm
folder's own) and as resnet_lite.data prepares imagefolder datasets with data.image_size. The logits go through the
run's own test-time augmentation level (its config's tta; --tta to choose) before the softmax, as in evaluate.
Directories are searched recursively for files with an image extension. A file that cannot be read is reported on stderr
and the others are still predicted.
Exit status: 0 when at least one image was predicted; 2 (with a one-line error) when none could be.
"""
import json
import sys
from pathlib import Path

import torch

from .cli import ArgumentParser, cli
from .data.images import IMAGE_ERRORS, decode, image_extensions, list_images
from .errors import UserError, first_line
from .models.tta import TTA, tta_level
from .outputs.console import console
from .outputs.rundir import RUN_OR_WEIGHTS, WEIGHTS
from .outputs.runs import TrainedModel, load_run

__all__ = ["find_images", "read_image", "predict", "main"]


def find_images(paths) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files, [(path, problem)]): files as given, directories walked as resnet_lite.data.images.list_images
    does."""
    files, problems, extensions = [], [], image_extensions()
    for path in map(Path, paths):
        if path.is_dir():
            found = [Path(p) for p in list_images(path, extensions)]
            if not found:
                problems.append((str(path), "is a directory with no image files"))
            files += found
        elif path.exists():
            files.append(path)
        else:
            problems.append((str(path), "does not exist"))
    return files, problems


def read_image(path, size: int, crop_pct: float = 1.0) -> torch.Tensor:
    """uint8 3 x size x size, decoded as for training (resnet_lite.data.images.decode). Raises one of IMAGE_ERRORS."""
    return torch.from_numpy(decode(path, size, crop_pct).copy()).permute(2, 0, 1)


def _device(name: str | None) -> torch.device:
    """The torch device `name` (default: cuda when available, else cpu), or a UserError when this machine lacks it."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device {name} is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():  # 0 without CUDA
        count = torch.cuda.device_count()
        fix = f"one of cuda:0 to cuda:{count - 1}, or cpu" if count else "cpu"
        raise UserError(f"--device {name}: this machine has {count or 'no'} CUDA GPU(s); use --device {fix}")
    try:
        torch.empty(0, device=device)  # another backend that is absent (mps, xpu) says so here
    except (RuntimeError, AssertionError) as e:
        reason = first_line(e).split(". ")[0]  # torch's first sentence
        raise UserError(f"--device {name} cannot be used here ({reason}); use --device cpu") from None
    return device


@torch.no_grad()
def predict(run: TrainedModel, paths, top_k: int = 5, batch_size: int = 64, device=None,
            tta: int | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """([{"file", "top": [{"label", "index", "probability"}, ...]}], [(file, problem)]) for image files/directories.
    tta: 0 none, 1 flip, 2 flip + translate (resnet_lite.models.tta.TTA); None: the run's own level (else 0)."""
    device = _device(device)
    if run.image_size is None:
        raise UserError(f"{run.weights} does not record the model's input size; re-export it with resnet_lite")
    files, problems = find_images(paths)
    tta = run.tta if tta is None else tta
    model = TTA(run.model.to(device), tta)
    k = min(top_k, len(run.classes))
    results = []
    for start in range(0, len(files), batch_size):
        names, images = [], []
        for path in files[start : start + batch_size]:
            try:
                images.append(read_image(path, run.image_size, run.meta.get("crop_pct", 1.0)))
                names.append(str(path))
            except IMAGE_ERRORS as e:
                problems.append((str(path), f"cannot be read as an image ({e})"))
        if not images:
            continue
        probs = model(run.normalize(torch.stack(images).to(device))).float().softmax(1)
        values, indices = probs.topk(k, dim=1)
        for name, vs, ix in zip(names, values.tolist(), indices.tolist(), strict=True):
            results.append({"file": name, "top": [{"label": run.classes[i], "index": i, "probability": v}
                                                  for v, i in zip(vs, ix, strict=True)]})
    return results, problems


def print_table(results: list[dict], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("file", overflow="fold")
    for i in range(len(results[0]["top"])):
        table.add_column(f"#{i + 1}", justify="left")
    for r in results:
        table.add_row(r["file"], *(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top"]))
    console(160).print(table)


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m resnet_lite.predict", __doc__)
    p.add_argument("path", metavar="RUN_DIR_OR_WEIGHTS", help=RUN_OR_WEIGHTS)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or directories of images")
    p.add_argument("--weights", choices=list(WEIGHTS), default="last",
                   help="which weights of a run directory (default last)")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--tta", type=tta_level, metavar="LEVEL",
                   help="test-time augmentation: 1 mirror, 2 mirror + 1-pixel shifts, 0 none "
                        "(default: the run's own setting)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--json", action="store_true", help="print a JSON list to stdout instead of a table")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        raise UserError("--top-k and --batch-size must be >= 1")
    run = load_run(args.path, args.weights)
    results, problems = predict(run, args.images, args.top_k, args.batch_size, args.device, args.tta)
    for path, problem in problems:
        print(f"warning: {path} {problem}", file=sys.stderr)
    if not results:
        raise UserError(f"no image could be predicted ({len(problems)} problem(s) above); give image files or "
                        f"directories holding them")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results, f"{run.meta['model']}: {run.weights}")
    return 0


if __name__ == "__main__":
    main()
