"""Measure a trained model: accuracy, loss, per-class accuracy and the confusion matrix, as tables and files.

    python -m resnet_lite.evaluate runs/m5                          # model_last.safetensors on the run's own test data
    python -m resnet_lite.evaluate runs/m5 --weights best --tta 1   # the best epoch, averaging x and its mirror image
    python -m resnet_lite.evaluate runs/m5 --tta 2                  # ... and the pair shifted by a pixel (airbench)
    python -m resnet_lite.evaluate runs/m5/model_last.safetensors --data imagefolder:~/cifar10-jpeg --output eval/
    accelerate launch -m resnet_lite.evaluate runs/m5               # each process takes a shard; the sums are reduced

Writes evaluation-<weights>-<split>-tta<level>.json and confusion-<...>.png into the run directory (or --output DIR),
e.g. evaluation-last-test-tta1.json; with any other data, batch size or precision than the run's own, the data's name
and a hash of those settings are added (evaluation-last-test-tta1-imagefolder_images-3f9c2a1b.json): evaluating again
with other settings keeps the earlier files, and again with the same settings rewrites the same result. The computation
is the trainer's own test pass (resnet_lite.training.engine.evaluate_loader through resnet_lite.models.tta.TTA), so the
run's last weights on its test data, with its TTA level, precision and eval batch size (all the defaults), give exactly
the summary's final_test_acc.
"""
import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, cast

import torch

from .cli import ArgumentParser, cli
from .data.loader import DeviceLoader
from .data.sources import SPECS, DataConfig, load_data
from .errors import UserError
from .models.tta import TTA, tta_level
from .outputs.console import console as wide_console
from .outputs.files import write_json
from .outputs.plots import plot_confusion
from .outputs.rundir import RUN_OR_WEIGHTS, WEIGHTS, evaluation_files
from .outputs.runs import TrainedModel, load_run
from .training.distributed import accelerator_session, resolve_mixed_precision
from .training.engine import evaluate_loader

__all__ = ["evaluate", "main"]

SPLITS = ("test", "val", "train")
MAX_TABLE_CLASSES = 20  # per-class rows printed; more classes: the weakest ones


def _precision(setting: str, run: TrainedModel) -> str:
    """'auto': the precision the run's final accuracy was measured with, where this machine can use it."""
    if setting != "auto":
        return setting
    recorded = (run.summary or {}).get("mixed_precision")
    if recorded in ("no", "bf16") or (recorded == "fp16" and torch.cuda.is_available()):
        return recorded
    return resolve_mixed_precision("auto")


def _data_config(run: TrainedModel, spec: str | None, data_dir: str | None, image_size: int | None) -> DataConfig:
    if run.config is None and spec is None:
        raise UserError(f"{run.weights} is not in a run directory, so its data is unknown; give --data SPEC ({SPECS})")
    cfg = run.config.data if run.config else DataConfig()
    changes: dict[str, Any] = {"spec": spec, "root": data_dir, "image_size": image_size}
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})


def evaluate(path, *, data: str | None = None, split: str = "test", weights: str = "last", tta: int | None = None,
             batch_size: int | None = None, mixed_precision: str = "auto", output=None, data_dir: str | None = None,
             image_size: int | None = None) -> dict:
    """Evaluate the model at `path` (see resnet_lite.outputs.runs.load_run) on a split of `data` (default: the run's
    own data).
    tta: 0 none, 1 flip, 2 flip + 1-pixel translate (resnet_lite.models.tta.TTA); None: the run's own level (else 0).

    Every process of `accelerate launch` takes its shard; the returned result is the same on all. The main process
    writes evaluation-<name>.json and confusion-<name>.png (see output_name) into `output` (default: the run
    directory, else beside the weights); report["files"] names them."""
    if split not in SPLITS:
        raise UserError(f"--split {split} is not one of {', '.join(SPLITS)}")
    run = load_run(path, weights)
    tta = run.tta if tta is None else tta
    data_cfg = _data_config(run, data, data_dir, image_size)
    batch_size = batch_size or (run.config.eval_batch_size if run.config else 512)
    with accelerator_session(mixed_precision=_precision(mixed_precision, run)) as accelerator:
        with accelerator.main_process_first():  # one download; the others then read it
            ds = load_data(data_cfg)
        if ds.classes != run.classes:
            raise UserError(f"{data_cfg.spec} has classes {_short(ds.classes)} but the model was trained on "
                            f"{_short(run.classes)}; evaluate on data with the model's classes")
        part = getattr(ds, split)
        if part is None:
            raise UserError(f"{data_cfg.spec} has no {split} split (a val split needs data.holdout or a val/ folder)")
        size = part.images.shape[-1]
        if run.image_size and size != run.image_size:
            raise UserError(f"{data_cfg.spec} holds {size}x{size} images but the model was trained on "
                            f"{run.image_size}x{run.image_size}; add --image-size {run.image_size}")
        # the run's memory format and compilation too: both change float rounding, and so a near tie's argmax
        channels_last = bool(run.config and run.config.channels_last)
        # torch's overloads of Module.to leave out memory_format beside a device, which it takes
        model = run.model.to(accelerator.device,  # type: ignore[call-overload]
                             memory_format=torch.channels_last if channels_last else torch.preserve_format)
        if run.config and run.config.compile:  # a Module (OptimizedModule), which torch.compile annotates as Callable
            model = cast(torch.nn.Module, torch.compile(model, backend=run.config.compile_backend))
        loader = DeviceLoader(part, batch_size, device=accelerator.device, train=False,
                              rank=accelerator.process_index, world_size=accelerator.num_processes)
        result = evaluate_loader(TTA(model, tta), loader, run.normalize, len(run.classes), accelerator, channels_last)
        report = _report(run, data_cfg.spec, split, tta, batch_size, result, accelerator)
        if accelerator.is_main_process:
            out = Path(output) if output else (run.run_dir or run.weights.parent)
            name = output_name(run, data_cfg, split, tta, batch_size, accelerator.mixed_precision)
            report_file, figure = evaluation_files(out, name)
            write_json(report, report_file)
            plot_confusion(result["confusion"], run.classes, figure,
                           f"{run.meta['model']} on {ds.name} {split}: {100 * result['acc']:.2f}%")
            report["files"] = [str(report_file), str(figure)]
    return report


def output_name(run: TrainedModel, data: DataConfig, split: str, tta: int, batch_size: int, precision: str) -> str:
    """'last-test-tta1': the weights, split and TTA level of an evaluation with the run's own data, eval batch size and
    precision. Any other setting adds the data's name and a hash of every setting that can change the result
    ('m-test-tta0-imagefolder_images-3f9c2a1b' for imagefolder:~/images), so that an evaluation with other settings,
    even of another folder of the same name, never replaces an earlier one, and the same settings rewrite the same
    files."""
    weights = run.weights.stem.removeprefix("model_")
    name = f"{weights}-{split}-tta{tta}"
    recorded = (run.summary or {}).get("mixed_precision")
    if (run.config is not None and data == run.config.data and batch_size == run.config.eval_batch_size
            and recorded in (None, precision)):
        return name
    kind, _, folder = data.spec.partition(":")
    where = str(Path(folder).expanduser().resolve()) if folder else data.spec
    settings = dict(dataclasses.asdict(data), spec=f"{kind}:{where}" if folder else kind, batch_size=batch_size,
                    precision=precision)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    label = kind + (f"_{Path(folder).name}" if folder else "")
    return re.sub(r"[^\w.-]+", "_", f"{name}-{label}-{digest}")


def _short(names: list[str]) -> str:
    return f"[{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}] ({len(names)})"


def _report(run: TrainedModel, spec, split, tta, batch_size, result, accelerator) -> dict:
    confusion = result["confusion"]
    report = {
        "model": run.meta["model"], "weights": str(run.weights), "data": spec, "split": split, "tta": tta,
        "samples": result["samples"], "acc": result["acc"], "loss": result["loss"],
        "per_class_acc": dict(zip(run.classes, result["per_class"], strict=True)),
        "per_class_samples": dict(zip(run.classes, confusion.sum(1).tolist(), strict=True)),
        "classes": run.classes, "confusion": confusion.tolist(), "batch_size": batch_size,
        "world_size": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
    }
    # the run's own final measurement is comparable: last weights, its test split, its TTA level
    # (a run's summary comes only with its config)
    if (run.summary and run.config is not None and run.weights.name == WEIGHTS["last"]
            and spec == run.config.data.spec and split == "test" and tta == run.tta):
        report["run_final_test_acc"] = run.summary["final_test_acc"]
    return report


def print_report(report: dict) -> None:
    from rich.table import Table

    console = wide_console()
    table = Table(title=f"{report['model']}: {report['weights']}", show_header=False)
    rows = [("data", f"{report['data']} ({report['split']}, {report['samples']} images)"),
            ("accuracy", f"{100 * report['acc']:.2f}%"), ("loss", f"{report['loss']:.4f}"),
            ("TTA", ("none", "flip", "flip + translate")[report["tta"]]),
            ("processes / precision", f"{report['world_size']} / {report['mixed_precision']}")]
    if "run_final_test_acc" in report:
        same = "the same" if report["run_final_test_acc"] == report["acc"] else "DIFFERENT"
        rows.append(("run's final_test_acc", f"{100 * report['run_final_test_acc']:.2f}% ({same})"))
    for row in rows:
        table.add_row(*row)
    console.print(table)

    classes, confusion = report["classes"], torch.tensor(report["confusion"])
    order: list[int] | range
    order = sorted(range(len(classes)), key=lambda i: report["per_class_acc"][classes[i]])[:MAX_TABLE_CLASSES]
    order = order if len(classes) > MAX_TABLE_CLASSES else range(len(classes))
    weakest = f" (the {MAX_TABLE_CLASSES} weakest)" if len(classes) > MAX_TABLE_CLASSES else ""
    per_class = Table(title="per class" + weakest)
    for col in ("class", "accuracy", "images", "most often taken for"):
        per_class.add_column(col, justify="left" if col in ("class", "most often taken for") else "right")
    for i in order:
        wrong = confusion[i].clone()
        wrong[i] = 0
        j = int(wrong.argmax())
        mistaken = f"{classes[j]} ({int(wrong[j])})" if wrong[j] > 0 else "-"
        per_class.add_row(classes[i], f"{100 * report['per_class_acc'][classes[i]]:.2f}%",
                          str(int(confusion[i].sum())), mistaken)
    console.print(per_class)
    if len(classes) <= 10:
        matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
        matrix.add_column("")
        for name in classes:
            matrix.add_column(name[:8], justify="right")
        for name, row in zip(classes, confusion.tolist(), strict=True):
            matrix.add_row(name, *map(str, row))
        console.print(matrix)
    if "files" in report:
        console.print(f"saved {' and '.join(report['files'])}", highlight=False)


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m resnet_lite.evaluate", __doc__)
    p.add_argument("path", metavar="RUN_DIR_OR_WEIGHTS", help=RUN_OR_WEIGHTS)
    p.add_argument("--data", metavar="SPEC", help=f"dataset ({SPECS}); default: the run's own")
    p.add_argument("--data-dir", metavar="DIR", help="where datasets are downloaded and cached (data.root)")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--weights", choices=list(WEIGHTS), default="last",
                   help="which weights of a run directory (default last)")
    p.add_argument("--tta", type=tta_level, metavar="LEVEL",
                   help="test-time augmentation: 1 averages the logits of each image and its mirror, "
                        "2 adds the pair shifted one pixel, 0 none (default: the run's own setting)")
    p.add_argument("--batch-size", type=int, help="GLOBAL images per batch (default: the run's eval_batch_size)")
    p.add_argument("--image-size", type=int, help="resize imagefolder images to this square size (data.image_size)")
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                   help="auto: the run's own, where this machine has it")
    p.add_argument("--output", metavar="DIR",
                   help="where evaluation-*.json and confusion-*.png go (default: the run directory)")
    p.add_argument("--json", action="store_true", help="print the evaluation JSON's content instead of tables")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    report = evaluate(args.path, data=args.data, split=args.split, weights=args.weights, tta=args.tta,
                      batch_size=args.batch_size, mixed_precision=args.mixed_precision, output=args.output,
                      data_dir=args.data_dir, image_size=args.image_size)
    if "files" in report:  # the main process
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_report(report)
    return 0


if __name__ == "__main__":
    main()
