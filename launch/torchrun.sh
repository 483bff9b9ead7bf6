#!/usr/bin/env bash
# Plain torchrun, no Accelerate config file: the trainer's Accelerator reads torchrun's environment.
# One machine, one process per GPU (two gloo processes on the CPU when there is no GPU):
#   bash launch/torchrun.sh --variant model5 --epochs 70
# Several machines: run on each, with the same MASTER_ADDR (the first machine) and its own NODE_RANK:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash launch/torchrun.sh --variant model5
# Environment: NPROC_PER_NODE (default: GPU count), NNODES (1), NODE_RANK, MASTER_ADDR, MASTER_PORT (29500),
# TRAIN_MODULE (resnet_lite.train). Mixed precision comes from the trainer's `mixed_precision` setting.
set -euo pipefail

gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
if [[ $gpus -eq 0 ]]; then
    # Without this each process would find no GPU and train alone instead of joining the group.
    export ACCELERATE_USE_CPU=true
    echo "torchrun.sh: no GPU found, running ${NPROC_PER_NODE:-2} CPU processes (gloo)" >&2
fi
nproc=${NPROC_PER_NODE:-$((gpus > 0 ? gpus : 2))}

nnodes=${NNODES:-1}
if [[ $nnodes -eq 1 ]]; then
    rendezvous=(--standalone)
else
    rendezvous=(--nnodes "$nnodes" --node_rank "${NODE_RANK:?set NODE_RANK (0 on the MASTER_ADDR machine)}"
        --rdzv_backend c10d --rdzv_endpoint "${MASTER_ADDR:?set MASTER_ADDR to the first machine}:${MASTER_PORT:-29500}"
        --rdzv_id "${RDZV_ID:-resnet_lite}")
fi

exec torchrun "${rendezvous[@]}" --nproc_per_node "$nproc" -m "${TRAIN_MODULE:-resnet_lite.train}" "$@"
