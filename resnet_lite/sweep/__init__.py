"""Train several presets as one study, by default the report's whole Table 1, and set the results beside the report's;
or a grid of settings, on this machine or as one Slurm job array.

    python -m resnet_lite.sweep                                        # model0..model8 as the presets say (70 epochs)
    python -m resnet_lite.sweep model5 model8 --epochs 3 --data synthetic data.image_size=16   # a try on a CPU
    python -m resnet_lite.sweep --gpus 0,1,2,3                         # four runs at a time, one per GPU
    python -m resnet_lite.sweep --launcher "accelerate launch --config_file launch/multi_gpu.yaml"  # each run, all GPUs
    python -m resnet_lite.sweep model5 optim.lr=0.01,0.003,0.001 --seeds 3   # a grid: 9 runs, lr0.01-seed0 ...
    python -m resnet_lite.sweep model5 optim.lr=0.01,0.003 --launcher "slurm --gpus-per-node=1" --wait   # a job array

Each run is `python -m resnet_lite.train --variant PRESET --output-dir OUTPUT_DIR/RUN --resume` in its own process
(prefixed by --launcher when given) with its console in OUTPUT_DIR/RUN/train.log; RUN is the preset, or for a grid
the values that differ (KEY=V1,V2,... lists a setting's values, --seeds N adds seed=0..N-1; with several presets the
preset leads the name). A run with a summary.json is done and skipped; one with checkpoints continues from its newest,
so after an interruption (Ctrl-C, a closed terminal, a lost node) the same command finishes the study. The flags and
single-valued KEY=VALUE overrides apply to every run (to change a finished run, remove its folder or use another
--output-dir).
--gpus runs one run per listed GPU at a time (CUDA_VISIBLE_DEVICES). With W&B on, the runs share one group, OUTPUT_DIR's
name (unless wandb.group= or $WANDB_RUN_GROUP says otherwise).
--launcher slurm [SBATCH OPTIONS] submits the unfinished runs as one job array of launch/slurm_1node.sbatch, a task per
run (time-limit warnings requeue and resume each task there); --wait waits for the array and collects it, and running
the same command again while the array is queued waits for it (or reports it) rather than submitting it twice (also
after an sbatch that did not answer: the array is found by its --comment, written to OUTPUT_DIR/slurm.json first).
After every run, OUTPUT_DIR gets results.md and results.csv (the report's model number and accuracy beside what each
run ran: model, batch, optimizer, lr, epochs, and what it measured: best and final accuracy, time and parameters; for a
grid, each run's own settings instead of the report's) and results.png
(every run's test accuracy per epoch in one figure).
"""
from .local import run_sweep
from .plan import PlannedRun, plan_runs
from .results import collect, write_results

__all__ = ["PlannedRun", "plan_runs", "run_sweep", "collect", "write_results"]
