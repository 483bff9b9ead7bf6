"""Load time and peak host memory of resnet_lite.data on the real CIFAR-10-JPEG set, cold and cached, and of the
CIFAR-10 binary reader on a full-size copy converted from it. Each phase runs in a fresh process so its peak RSS is
its own. Needs the CIFAR-10-JPEG archive (a .tar.gz of cifar10-jpeg/{train,test}/<class>/*.jpg) and about 1 GB of
scratch space, in a new temporary folder (under --work when given) that it removes at the end.

    python benchmarks/data_loading.py --tarball PATH/cifar10-jpeg.tar.gz [--work DIR] [--repeats 3]
"""
import argparse
import datetime
import json
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def phase(spec, root, device):
    """One load in this process; prints a JSON line of figures."""
    import torch

    from resnet_lite.data.loader import DeviceLoader
    from resnet_lite.data.sources import load_dataset

    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    ds = load_dataset(spec, root=root)
    seconds = time.perf_counter() - t
    out = {
        "seconds": seconds,
        "train": len(ds.train), "test": len(ds.test),
        "mean": ds.mean, "std": ds.std,
        "import_mib": imported,  # peak RSS after `import torch, resnet_lite.data`, before loading
        "host_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # largest single child: `import torch` starts one (~430 MiB); forked decode workers count pages shared with us
        "workers_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "split_mib": (ds.train.images.nbytes + ds.train.labels.nbytes) / 2**20,
    }
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        loader = DeviceLoader(ds.train, 128, device="cuda")
        for _ in loader:
            pass
        torch.cuda.synchronize()
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def run_phase(spec, root, repeats=1, before=None):
    """Median seconds and largest peaks over `repeats` fresh processes; `before()` runs ahead of each."""
    runs = []
    for _ in range(repeats):
        if before:
            before()
        cmd = [sys.executable, __file__, "--phase", spec, "--root", str(root)]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    out = dict(runs[0], seconds=statistics.median(r["seconds"] for r in runs), repeats=repeats)
    for k in ("import_mib", "host_peak_mib", "workers_peak_mib"):
        out[k] = max(r[k] for r in runs)
    return out


def write_bin_copy(jpeg_root, cache, target):
    """CIFAR-10 binary layout (5 train batches + test) with the JPEG set's pixels: a full-size input for the reader."""
    import numpy as np

    from resnet_lite.data.sources import load_dataset

    ds = load_dataset(f"imagefolder:{jpeg_root}", root=str(cache))
    folder = target / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)

    def records(split, idx):
        images = split.images[idx].reshape(len(idx), -1).numpy()
        return np.concatenate([split.labels[idx].numpy().astype(np.uint8)[:, None], images], 1).tobytes()

    for i, idx in enumerate(np.array_split(np.arange(len(ds.train)), 5), 1):
        (folder / f"data_batch_{i}.bin").write_bytes(records(ds.train, idx))
    (folder / "test_batch.bin").write_bytes(records(ds.test, np.arange(len(ds.test))))
    (folder / "batches.meta.txt").write_text("\n".join(ds.classes) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", help="the CIFAR-10-JPEG archive (required)")
    parser.add_argument("--work",
                        help="a folder to make the scratch folder in (default: the system's temporary folder)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.phase:
        return phase(args.phase, args.root, args.device)
    if not args.tarball or not Path(args.tarball).is_file():
        problem = f"{args.tarball} is not a file; " if args.tarball else ""
        parser.exit(2, f"data_loading.py: {problem}give the CIFAR-10-JPEG archive: "
                       "--tarball PATH/cifar10-jpeg.tar.gz\n")

    import torch

    # a folder of its own, never one the user named: only what this run made is removed
    work = Path(tempfile.mkdtemp(prefix="resnet_lite-data_loading-", dir=args.work))
    try:
        report(args, work, torch)
    except subprocess.CalledProcessError as e:
        said = (e.stderr or "").strip().splitlines()
        parser.exit(1, f"data_loading.py: {shlex.join(map(str, e.cmd))} failed (exit {e.returncode})"
                       f"{': ' + said[-1] if said else ''}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, work: Path, torch):
    t = time.perf_counter()
    subprocess.run(["tar", "-xzf", args.tarball, "-C", str(work)], check=True, capture_output=True, text=True)
    print(f"extracted {args.tarball} in {time.perf_counter() - t:.1f} s")
    found = sorted(work.glob("*/train"))
    if not found:
        raise SystemExit(f"data_loading.py: {args.tarball} holds no <folder>/train/: is it CIFAR-10-JPEG?")
    jpeg_root, cache = found[0].parent, work / "cache"
    spec = f"imagefolder:{jpeg_root}"

    def clear_cache():
        shutil.rmtree(cache, ignore_errors=True)

    cold = run_phase(spec, cache, args.repeats, before=clear_cache)
    warm = run_phase(spec, cache, args.repeats)
    write_bin_copy(jpeg_root, cache, work / "bin")
    stats = work / "bin" / "cifar-10-batches-bin.stats.json"
    binary_first = run_phase("cifar10", work / "bin", args.repeats, before=lambda: stats.unlink(missing_ok=True))
    binary = run_phase("cifar10", work / "bin", args.repeats)

    cpu = platform.processor() or platform.machine()
    cores = len(__import__('os').sched_getaffinity(0))
    print(f"\n{datetime.date.today()}  torch {torch.__version__}  {cpu}, {cores} cores"
          f"{'  ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
    print(f"median of {args.repeats} fresh processes each; peak RSS after imports alone: {cold['import_mib']:.0f} MiB")
    print(f"{'phase':<44}{'seconds':>9}{'host peak MiB':>15}{'child peak MiB':>16}")
    for name, r in [("imagefolder CIFAR-10-JPEG, decode (cold)", cold), ("imagefolder CIFAR-10-JPEG, cached", warm),
                    ("cifar10 binary layout, stats computed", binary_first),
                    ("cifar10 binary layout, stats cached", binary)]:
        print(f"{name:<44}{r['seconds']:>9.2f}{r['host_peak_mib']:>15.0f}{r['workers_peak_mib']:>16.0f}")
    print(f"cached / cold load time: {warm['seconds'] / cold['seconds']:.3f}  "
          f"(speedup {cold['seconds'] / warm['seconds']:.0f}x)")
    print(f"train split as uint8: {cold['split_mib']:.1f} MiB; {cold['train']} train / {cold['test']} test")
    print(f"mean {tuple(round(m, 4) for m in cold['mean'])} std {tuple(round(s, 4) for s in cold['std'])} "
          "(CIFAR-10-JPEG)")
    if "cuda_peak_mib" in cold:
        print(f"CUDA peak allocated, train split resident + one epoch of batch 128: {cold['cuda_peak_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
