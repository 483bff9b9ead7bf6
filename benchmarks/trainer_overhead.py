"""Training images/s of resnet_lite.train against a bare PyTorch loop: same model, batch, data, augmentation, device.

    python benchmarks/trainer_overhead.py            # lite_r4b2, batch 128, 1024 32x32 synthetic images/epoch, 4 rounds
    python benchmarks/trainer_overhead.py --quick    # 16x16 images, fewer of them: a smoke run
    python benchmarks/trainer_overhead.py --train-images 50000 --rounds 3             # a GPU: CIFAR-sized epochs

The bare loop is what one writes by hand: the uint8 set on the device, a randperm per epoch, index_select, the
`seed` augmentation, forward, cross-entropy, backward, Adam, a per-batch LambdaLR step. The trainer is
`train(cfg)` in this process, with Accelerate, the progress display, per-step augmentation reseeding, loss
bookkeeping and per-epoch checkpoints and weights. Both run the same number of epochs; the first epoch of each is
warm-up and is dropped; rounds alternate which of the two goes first, so that load drifts hit both. Reported:
training images/s (the trainer's from its metrics.jsonl, timed like the bare loop, without evaluation and saving),
and whole-epoch images/s including what the trainer does between epochs (saving; evaluation only in the last).
The ratio is the median over rounds of trainer / bare within a round, neighbours in time; the ratio of the fastest
epochs of each (as timeit takes the minimum) is printed too, since load from other jobs only slows epochs down.

On a CPU, glibc's malloc hands the ~17 MB activation buffers back to the kernel and page-faults them in again every
step (30-90k minor faults per step here), by an amount that depends on the heap's history, so the same loop can
differ by +-10% between runs. To see the trainer's own overhead, also run with the heap kept (set before Python
starts): MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=100000000000 python benchmarks/trainer_overhead.py
"""
import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _machine import hardware  # benchmarks/ is on sys.path when a script runs

from resnet_lite.config import resolve_config
from resnet_lite.data.augment import build_augment
from resnet_lite.data.sources import DataConfig, load_data
from resnet_lite.models.lite import create_model
from resnet_lite.train import train


def bare_loop(ds, args, device, precision):
    """Per-epoch training images/s of a hand-written loop (first epoch dropped)."""
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=len(ds.classes)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    steps = -(-len(ds.train) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / (steps * args.epochs))))
    augment = build_augment("report", ds.mean, ds.std)
    images, labels = ds.train.images.to(device), ds.train.labels.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    rates = []
    for epoch in range(args.epochs):
        model.train()
        start = time.perf_counter()
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch)).to(device)
        for i in range(steps):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            x, y = augment(images.index_select(0, idx), generator), labels.index_select(0, idx)
            with autocast:
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        loss.item()  # wait for the device
        rates.append(len(labels) / (time.perf_counter() - start))
    return rates[1:]


def trainer(args, out, precision):
    """(training images/s per epoch, whole-epoch images/s per epoch), first epoch dropped, from metrics.jsonl."""
    cfg = resolve_config(overrides=[
        f"model={args.model}", "data.spec=synthetic", f"data.synthetic_train={args.train_images}",
        "data.synthetic_test=256",
        f"data.image_size={args.image_size}", f"batch_size={args.batch_size}", f"epochs={args.epochs}",
        f"eval_every={args.epochs}", "optim.lr=0.01", "schedule.name=cosine", f"mixed_precision={precision}",
        "wandb=disabled", f"output_dir={out}"])
    with contextlib.redirect_stdout(io.StringIO()):
        train(cfg)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["images_per_second"] for r in rows[1:]], [args.train_images / r["epoch_seconds"] for r in rows[1:]]


def _change(ratio):
    return f"trainer {abs(100 * (1 - ratio)):.1f}% {'slower' if ratio < 1 else 'faster'}"




def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lite_r4b2")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--train-images", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3, help="per run; the first is warm-up")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="16x16 images, 512 of them, 1 round")
    args = p.parse_args()
    if args.quick:
        args.image_size, args.train_images, args.rounds = 16, 512, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    ds = load_data(DataConfig("synthetic", synthetic_train=args.train_images, synthetic_test=256,
                              image_size=args.image_size))

    print(f"trainer overhead: {args.model}, batch {args.batch_size}, {args.train_images} synthetic "
          f"{args.image_size}x{args.image_size} images/epoch, {args.epochs} epochs/run (first dropped), "
          f"{args.rounds} rounds, mixed precision {precision}")
    print(f"hardware: {hardware(device)}; torch {torch.__version__}; python {platform.python_version()}; "
          f"{datetime.date.today()}")
    malloc = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_"))
    print(f"command: {malloc + ' ' if malloc else ''}python {' '.join(sys.argv)}")
    ratios, whole_ratios, bare_rates, ours_rates, bare_all, ours_all = [], [], [], [], [], []
    for r in range(args.rounds):
        # alternate which goes first, so that a warming or cooling machine favours neither
        for which in (("bare", "trainer") if r % 2 == 0 else ("trainer", "bare")):
            if which == "bare":
                b = bare_loop(ds, args, device, precision)
                bare, bare_all = statistics.median(b), bare_all + b
            else:
                with tempfile.TemporaryDirectory() as out:
                    t, w = trainer(args, out, precision)
                ours, whole, ours_all = statistics.median(t), statistics.median(w), ours_all + t
        ratios.append(ours / bare)
        whole_ratios.append(whole / bare)
        bare_rates.append(bare)
        ours_rates.append(ours)
        print(f"  round {r + 1}: bare {bare:.1f}, trainer {ours:.1f} images/s (training), {whole:.1f} (whole epoch); "
              f"ratio {ours / bare:.3f}", flush=True)
    ratio, whole_ratio = statistics.median(ratios), statistics.median(whole_ratios)
    print(f"bare loop                          {statistics.median(bare_rates):8.1f} images/s (median of rounds)")
    print(f"trainer, training                  {statistics.median(ours_rates):8.1f} images/s")
    print(f"ratio trainer / bare, training     {ratio:.3f}  ({_change(ratio)}; rounds "
          f"{min(ratios):.3f}..{max(ratios):.3f})")
    print(f"ratio, whole epoch (with saving)   {whole_ratio:.3f}  ({_change(whole_ratio)})")
    # other jobs on the machine only ever slow an epoch down: the fastest epoch of each is the least disturbed (timeit)
    best = max(ours_all) / max(bare_all)
    print(f"ratio of the fastest epochs        {best:.3f}  ({_change(best)}; bare {max(bare_all):.1f}, "
          f"trainer {max(ours_all):.1f} images/s)")
    print(f"target: training at most 5% slower -> {'met' if ratio >= 0.95 else 'NOT met'}")


if __name__ == "__main__":
    main()
