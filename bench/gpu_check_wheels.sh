#!/usr/bin/env bash
# The wheels bench/gpu_check.py needs on a GPU machine that has torch, transformers and peft but not DeepSpeed or
# dpo-ray's config stack (Python 3.12, manylinux x86_64), and the transformers dpo-ray pins (the image has 5.17):
# ~18 MB into .whl/. DeepSpeed and antlr4 ship only as sdists, so they are built here (pure Python: no DeepSpeed op
# is compiled ahead).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8 antlr4-python3-runtime==4.9.3
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  hjson==3.1.0 hydra-core==1.3.8 omegaconf==2.3.0 transformers==5.19.0 \
  pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.7.0 typing-inspection==0.4.2
du -sh .whl && ls .whl
