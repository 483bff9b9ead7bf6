"""Images/s of the batched `report` augmentation against the report's own per-image PIL pipeline, same CPU, one run.

    python benchmarks/augment.py --tarball PATH/cifar10-jpeg.tar.gz   # 50k-image epoch for ours, 10,240 per baseline
    python benchmarks/augment.py --quick    # a few seconds, on random images
    python benchmarks/augment.py --compile  # also torch.compile'd (inductor: a compile of its own first)

The baseline is what the report's notebook ran: a Dataset returning torchvision's RandomRotation(5) ->
RandomHorizontalFlip -> RandomCrop(32, 4) -> ColorJitter(.2, .2, .2) -> ToTensor -> Normalize on one
PIL image at a time, batched by a shuffling DataLoader (default num_workers=0; 2 also reported, worker
start-up included as in a non-persistent epoch). Ours includes the per-batch index gather from a shuffled
uint8 tensor. Images: the first 10,000 training images of the CIFAR-10-JPEG archive given with --tarball (read from
the archive, nothing extracted; tiled to 50,000), else random uint8. On CUDA it also times a whole 50k epoch on the GPU.
"""
import argparse
import datetime
import os
import platform
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from _machine import cpu_name  # benchmarks/ is on sys.path when a script runs
from PIL import Image

from resnet_lite.data.augment import build_augment

MEAN = (0.4914, 0.4821, 0.4465)  # the report's CIFAR-10 statistics
STD = (0.2470, 0.2434, 0.2615)
EPOCH = 50_000


def load_images(count, tarball):
    """uint8 count x 32 x 32 x 3 (HWC, as the notebook's CIFAR10 dataset holds them) and a description."""
    if tarball is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), "random uint8 (no --tarball)"
    images = []
    with tarfile.open(tarball) as tar:  # read from the stream: nothing extracted to disk
        for member in tar:
            if member.isfile() and "/train/" in member.name and member.name.endswith(".jpg"):
                images.append(np.array(Image.open(tar.extractfile(member)).convert("RGB")))
                if len(images) == count:
                    break
    return np.stack(images), f"{len(images)} CIFAR-10-JPEG train images from {tarball.name}"


class NotebookDataset(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__: PIL image from HWC uint8, then the transform."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), 0


def rates(batch_times, count):
    """(images/s over the whole run, images/s from the median batch time: steadier when others share the CPU)."""
    per_batch = count / len(batch_times)
    return count / sum(batch_times), per_batch / statistics.median(batch_times)


def notebook_pipeline_rate(images, batch_size, workers):
    transform = T.Compose([
        T.RandomRotation(5), T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2), T.ToTensor(), T.Normalize(MEAN, STD),
    ])
    loader = torch.utils.data.DataLoader(NotebookDataset(images, transform), batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True)
    times, last = [], time.perf_counter()
    for _ in loader:  # worker start-up lands in the first batch, as in a non-persistent epoch
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return rates(times, len(times) * batch_size)


def batched_rate(fn, data, batch_size, count, repeats, sync=lambda: None):
    """Rates over `repeats` passes of `count` images (drawn through a shuffled index), after one warm-up batch."""
    generator = torch.Generator(device=data.device).manual_seed(0)
    perm = torch.randperm(len(data), device=data.device, generator=generator)
    fn(data[perm[:batch_size]], generator)
    times = []
    for _ in range(repeats):
        for i in range(0, count - batch_size + 1, batch_size):
            sync()
            start = time.perf_counter()
            fn(data[perm[i % len(data):][:batch_size]], generator)
            sync()
            times.append(time.perf_counter() - start)
    return rates(times, len(times) * batch_size)




def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-second run with fewer images")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--tarball", type=Path, help="the CIFAR-10-JPEG archive (default: random images)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(fn) on the CPU")
    args = parser.parse_args()
    if args.tarball and not args.tarball.is_file():
        parser.error(f"--tarball {args.tarball} is not a file")
    bs = args.batch_size
    baseline_count = 1024 if args.quick else 10_240
    ours_count = 4096 if args.quick else EPOCH
    repeats = 1 if args.quick else 3

    print(f"date      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"cpu       {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"gpu       {gpu}")
    print(f"versions  python {platform.python_version()}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, pillow {Image.__version__}")
    images, source = load_images(10_000 if not args.quick else 2048, args.tarball)
    print(f"data      {source}; batch size {bs}")

    base = {w: notebook_pipeline_rate(images[:baseline_count], bs, w) for w in (0, 2)}
    for w, (wall, med) in base.items():
        print(f"report's pipeline, PIL per image, DataLoader num_workers={w}: {wall:10,.0f} images/s "
              f"(median batch {med:,.0f})  {baseline_count} images")

    reps = -(-EPOCH // len(images)) if not args.quick else 1
    data = torch.from_numpy(np.ascontiguousarray(np.tile(images, (reps, 1, 1, 1))[:EPOCH if not args.quick else None]))
    data = data.permute(0, 3, 1, 2).contiguous()  # N x 3 x 32 x 32 uint8, as resnet_lite.data holds it
    report = build_augment("report", MEAN, STD)
    fast = build_augment("fast", MEAN, STD)
    rows = []
    threads = torch.get_num_threads()
    for t in sorted({1, threads}):  # 1 thread: the one core the workers=0 baseline uses
        torch.set_num_threads(t)
        rows.append((f"report preset, batched, CPU eager, {t} thread(s)",
                     batched_rate(report, data, bs, ours_count, repeats)))
        rows.append((f"fast preset, batched, CPU eager, {t} thread(s)",
                     batched_rate(fast, data, bs, ours_count, repeats)))
    torch.set_num_threads(threads)
    if args.compile:
        compiled = torch.compile(report)
        start = time.perf_counter()
        compiled(data[:bs], torch.Generator().manual_seed(0))
        print(f"torch.compile warm-up {time.perf_counter() - start:.1f} s")
        rows.append(("report preset, batched, CPU torch.compile",
                     batched_rate(compiled, data, bs, ours_count, repeats)))
    print(f"ours: {ours_count} images x {repeats} passes; ratios are wall over wall (median batch over median batch)")
    for name, (wall, med) in rows:
        print(f"{name}: {wall:10,.0f} images/s (median batch {med:,.0f})  "
              f"= {wall / base[0][0]:.1f}x ({med / base[0][1]:.1f}x) workers=0, "
              f"{wall / base[2][0]:.1f}x ({med / base[2][1]:.1f}x) workers=2")

    if torch.cuda.is_available():
        gpu_data = data.cuda()
        generator = torch.Generator(device="cuda").manual_seed(0)
        for batch_size in (bs, 5000):
            perm = torch.randperm(len(gpu_data), device="cuda", generator=generator)
            def epoch(perm=perm, batch_size=batch_size):  # this iteration's permutation and batch size
                return [report(gpu_data[perm[i:i + batch_size]], generator) for i in range(0, len(perm), batch_size)]

            epoch()  # warm-up: kernels, caching allocator
            times = []
            for _ in range(3):
                torch.cuda.synchronize()
                start = time.perf_counter()
                epoch()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            best = min(times)
            print(f"report preset, whole {len(gpu_data)}-image epoch on {gpu}, batch {batch_size}: "
                  f"{len(gpu_data) / best:12,.0f} images/s ({best * 1e3:.1f} ms per epoch, best of 3)")
    print(f"load average {os.getloadavg()[0]:.2f} at end (other processes on these cores distort every figure)")


if __name__ == "__main__":
    main()
