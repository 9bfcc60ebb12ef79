#!/bin/bash
# Submits launch/slurm/dpo-ray.sbatch with the allocation filled from the run's config, e.g.
#   launch/slurm/submit.sh online cluster=multi_node online.rounds=4
# Each node is asked for whole (--exclusive, all its memory) and for at least the CPUs the run's groups reserve on it,
# with --gres=gpu:N for their GPUs; DPO_RAY_SHARE_NODES=1 asks for just those CPUs and GPUs, on nodes other jobs may
# share. Other sbatch options go in SBATCH_ARGS (e.g. SBATCH_ARGS="--partition=gpu --time=12:00:00"), after these, so
# they win. The venv is DPO_RAY_VENV (default: this checkout's .venv); SBATCH names the sbatch command (default sbatch).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DPO_RAY_VENV=${DPO_RAY_VENV:-$(cd "$here/../.." && pwd)/.venv}
# A bad option stops here, with its message, before anything is queued.
shape=$("$DPO_RAY_VENV/bin/python" -m dpo_ray.slurm "$@")
read -r nodes gpus cpus <<< "$shape"
allocation=(--nodes="$nodes" --ntasks-per-node=1 --cpus-per-task="$cpus")
if [ "$gpus" -gt 0 ]; then allocation+=(--gres="gpu:$gpus"); fi
if [ "${DPO_RAY_SHARE_NODES:-0}" != 1 ]; then allocation+=(--exclusive --mem=0); fi
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
exec ${SBATCH:-sbatch} "${allocation[@]}" ${SBATCH_ARGS:-} "$here/dpo-ray.sbatch" "$@"
