#!/bin/bash
# Multi-node ssmkit training on SLURM: one task per node, `accelerate launch` starts one process per GPU.
# Usage:  sbatch scripts/slurm/train.sh RECIPE [key.sub=value ...]
#         sbatch --nodes 4 scripts/slurm/train.sh recipes/lra/listops.yaml train.batch_size=16
# Resume (same number of nodes or not): sbatch scripts/slurm/train.sh --resume runs/NAME
# Requeued jobs (the same command every time: starts the run, or continues it from its checkpoint):
#         sbatch --requeue scripts/slurm/train.sh RECIPE --run-dir runs/NAME --resume auto
# Exit codes: 0 finished, 2 bad input, 3 non-finite loss, 143 stopped by SIGTERM after saving (requeue it).
# train.batch_size is per process: the global batch is batch_size x grad_accum x nodes x GPUs per node.
#SBATCH --job-name=ssmkit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#SBATCH --signal=TERM@120
set -euo pipefail

GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
export OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-8} / GPUS_PER_NODE ))
# Keep the run directory on a filesystem all nodes share: only rank 0 writes it, every rank reads it on resume.
export SSMKIT_DATA=${SSMKIT_DATA:-$PWD/data}

# SIGTERM (sent by SLURM 120 s before the time limit, or by scancel) makes every process finish its step;
# rank 0 saves a checkpoint, and `--resume runs/NAME` continues it exactly.
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
  --multi_gpu \
  --num_machines $SLURM_NNODES \
  --num_processes $(( SLURM_NNODES * GPUS_PER_NODE )) \
  --machine_rank \$SLURM_NODEID \
  --main_process_ip $MAIN_ADDR \
  --main_process_port $MAIN_PORT \
  --rdzv_backend c10d \
  -m ssmkit train $*"
