#!/bin/bash
# An `ssmkit sweep` grid as a SLURM array job: one array task per (point, seed) run, each an ordinary
# `ssmkit train` in its own run directory under the sweep folder (ssmkit/sweep.py, docs/distributed.md).
# Usage (from a login node; the script submits itself with one array task per run):
#   scripts/slurm/sweep.sh RECIPE key=v1,v2 ... [--seeds N] --dir SWEEP_DIR
#   scripts/slurm/sweep.sh recipes/s4/scifar.yaml model.layer.d_state=16,32,64 optimizer.lr=1e-3,3e-3 \
#       --seeds 3 --dir runs/sweeps/scifar-dstate
# Then:   ssmkit sweep --table --dir SWEEP_DIR                      (mean ± std over seeds; --json for a file)
#         ssmkit plot --sweep SWEEP_DIR --x model.layer.d_state --y val/accuracy
# Submitting the same command again is the resume: tasks whose run finished exit at once, runs with a
# checkpoint continue (`ssmkit train --resume`), the rest start. MAX_PARALLEL (default 16) caps the tasks
# running at once. Keep SWEEP_DIR on a filesystem all nodes share (with working flock: a run is started by one
# task at a time).
#SBATCH --job-name=ssmkit-sweep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%A_%a.out
#SBATCH --signal=B:TERM@120
set -euo pipefail

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  # On the login node: check the grid (a bad key or value fails here, in one line) and submit one task per run.
  RUNS=$(ssmkit sweep "$@" --list | wc -l)
  if [ "$RUNS" -eq 0 ]; then
    echo "error: the sweep has no runs" >&2
    exit 2
  fi
  exec sbatch --array=0-$(( RUNS - 1 ))%"${MAX_PARALLEL:-16}" "$0" "$@"
fi

export SSMKIT_DATA=${SSMKIT_DATA:-$PWD/data}
# `exec`: the batch shell becomes the sweep process, so SLURM's SIGTERM (B:TERM, 120 s before the time limit,
# or scancel) reaches it; it forwards SIGTERM to its training, which saves a checkpoint. The task's one GPU is
# its CUDA_VISIBLE_DEVICES, and OMP_NUM_THREADS defaults to the task's CPUs.
exec ssmkit sweep "$@" --index "$SLURM_ARRAY_TASK_ID"
