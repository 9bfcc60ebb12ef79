"""Peak extra memory (RSS) of scoring and back-propagating one batch with a 49k vocabulary (SmolLM2's), in a fresh
process: `old` materialises the full-vocabulary logits as the model returns them; `chunked MiB` goes through the
ScoringHead with that chunk budget. Run by tests/test_logprobs.py; prints one line: the mode and MiB."""

import random
import resource
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dpo_ray.data.collate import BatchLayout, collate_pairs
from dpo_ray.data.tokenize import TokenizedPair
from dpo_ray.logprobs import MODEL_INPUTS, forward_pairs, install_scoring_head

torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    tie_word_embeddings=True,
)
model = LlamaForCausalLM(config)
rng = random.Random(0)
ids = lambda k: tuple(rng.randrange(5, 49000) for _ in range(k))  # noqa: E731
batch = collate_pairs([TokenizedPair(ids(40), ids(60), ids(60)) for _ in range(16)], 0, BatchLayout("padded"))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "old":
    logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).logits
    flat = logits.reshape(-1, logits.shape[-1])[batch["predictor_index"]].float()
    targets = batch["input_ids"].reshape(-1)[batch["target_index"]]
    (flat.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(flat, -1)).sum().backward()
else:
    install_scoring_head(model, int(sys.argv[2]) << 20)
    out = forward_pairs(model, batch)
    (out.chosen_logps.sum() + out.rejected_logps.sum()).backward()
print(sys.argv[1], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
