"""Greedy chat answers from a real vLLM engine (CPU), run as a subprocess: vLLM pins the threads of the process that
hosts an in-process engine, so it stays out of the test process."""

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from vllm import LLM, SamplingParams  # noqa: E402

model_dir, prompts = sys.argv[1], json.loads(sys.argv[2])
llm = LLM(
    model=model_dir, dtype="float32", enforce_eager=True, max_model_len=128, kv_cache_memory_bytes=64 << 20, seed=0
)
outs = llm.chat(
    [[{"role": "user", "content": p}] for p in prompts], SamplingParams(temperature=0, max_tokens=24), use_tqdm=False
)
print("RESULT" + json.dumps([o.outputs[0].text for o in outs]))
