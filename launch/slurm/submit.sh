#!/bin/bash
# Submits launch/slurm/dpo-ray.sbatch with --nodes and --gres=gpu:N filled from the run's config, e.g.
#   launch/slurm/submit.sh online cluster=multi_node online.rounds=4
# Other sbatch options go in SBATCH_ARGS (e.g. SBATCH_ARGS="--partition=gpu --time=12:00:00"); the venv in
# DPO_RAY_VENV (default: this checkout's .venv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DPO_RAY_VENV=${DPO_RAY_VENV:-$(cd "$here/../.." && pwd)/.venv}
# A bad option stops here, with its message, before anything is queued.
shape=$("$DPO_RAY_VENV/bin/python" -m dpo_ray.slurm "$@")
read -r nodes gpus <<< "$shape"
gres=()
if [ "$gpus" -gt 0 ]; then gres=(--gres="gpu:$gpus"); fi
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
exec sbatch --nodes="$nodes" "${gres[@]}" ${SBATCH_ARGS:-} "$here/dpo-ray.sbatch" "$@"
