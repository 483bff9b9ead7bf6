"""What the trainer's per-step stop check costs: resnet_lite.training.signals.StopCheck
(a MAX all-reduce of three numbers per optimizer step, read one step later) against the same DDP training step
without it, in one and in two processes.

    python benchmarks/stop_check.py                          # CPU: gloo; on GPUs: NCCL, one process per GPU
    python benchmarks/stop_check.py --image-size 32 --batch-size 128 --steps 20 --rounds 3

Each round times `steps` plain steps, `steps` steps with the lagged check (what the trainer does between
checkpoints) and `steps` with a waited one (what it does before a checkpoint), in turn, so load from other jobs hits
all three (each leads a round in turn); per setting it prints the median round's milliseconds per step and the
ratio to plain steps.
"""
import argparse
import datetime
import os
import platform
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from resnet_lite.models.lite import create_model
from resnet_lite.training.signals import StopCheck, StopFlag


def _worker(rank: int, world: int, args, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # one thread per process: two processes share this machine's cores
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = create_model("lite_r4b2", num_classes=10).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size // world, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (len(x),), device=device)
    check = StopCheck(StopFlag(), device, world)
    loss_sum = torch.zeros((), device=device)

    def steps(mode: str) -> float:
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        for step in range(args.steps):
            loss = torch.nn.functional.cross_entropy(ddp(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum.add_(loss.detach())
            if mode != "plain":
                check(step, 1e-3, loss_sum, model if mode == "waited" else None, wait=mode == "waited")
        check.close()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps

    steps("plain")  # warm-up
    times = {mode: [] for mode in ("plain", "lagged", "waited")}
    modes = list(times)
    for r in range(args.rounds):
        for mode in modes[r % 3:] + modes[:r % 3]:  # each setting leads a round in turn
            times[mode].append(steps(mode))
    if rank == 0:
        base = statistics.median(times["plain"])
        for mode, values in times.items():
            ms = statistics.median(values) * 1e3
            print(f"| {world} | {mode} | {ms:.2f} | {ms / (base * 1e3):.3f} |", flush=True)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64, help="global, split over the processes")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    gpus = torch.cuda.device_count()
    device = torch.cuda.get_device_name(0) if gpus else platform.processor() or platform.machine()
    print(f"{device}, {os.cpu_count()} CPUs, torch {torch.__version__}, {datetime.date.today()}; lite_r4b2, "
          f"{args.image_size}x{args.image_size}, global batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds")
    print("| processes | check | ms per step | ratio to plain |\n|---|---|---|---|")
    for world, port in ((1, 29531), (2, 29532)):
        if gpus and world > gpus:
            continue
        mp.spawn(_worker, args=(world, args, port), nprocs=world, join=True)


if __name__ == "__main__":
    main()
