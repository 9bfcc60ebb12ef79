"""The tensors an inference engine gets from the policy, one at a time: HF names, LoRA merged in or the adapter alone.

Each unit is a parameter as the engines take it: the specs of its tensors (one, or for experts fused in memory one per
expert and projection, as the checkpoint has them), the policy parameters it is made of, and how to make its tensors
once those are gathered. Units are gathered (ZeRO-3) a bucket's worth at a time, so no rank ever holds the whole model.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .weight_stream import TensorSpec

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"  # the adapter name peft gives the one adapter we train
ENGINES, REFERENCE = "engines", "reference"  # where the policy's weights go: the vLLM engines, TR-DPO's reference
# Which of the policy's weights score pairs as a reference: the starting reference (LoRA: the adapter off), the weights
# as they are, or those snapshot at the round's start (online.reference_update=each_round).
START, CURRENT, ROUND_START = "start", "current", "round_start"


@dataclass(frozen=True)
class WeightUnit:
    specs: tuple[TensorSpec, ...]
    params: tuple[torch.nn.Parameter, ...]
    make: Callable[[], list[torch.Tensor]]  # its tensors, in the specs' order, once params are gathered

    @property
    def nbytes(self) -> int:
        return sum(spec.nbytes for spec in self.specs)


def _shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    return tuple(getattr(p, "ds_shape", p.shape))  # ZeRO-3 keeps the full shape aside; the local tensor is empty


def lora_scaling(lora) -> float:
    """The adapter's scale: alpha / r, or alpha / sqrt(r) with use_rslora (peft's)."""
    return lora.alpha / (math.sqrt(lora.r) if lora.use_rslora else lora.r)


def merged_weight(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, magnitude: torch.Tensor | None = None
) -> torch.Tensor:
    """W + scaling * B @ A in fp32, back in W's dtype: peft's merge. With DoRA's magnitude m, each output row of that
    sum is rescaled to m's length: m / ||W + s B A||_row * (W + s B A)."""
    merged = weight.float() + scaling * (b.float() @ a.float())
    if magnitude is not None:
        merged = (magnitude.float() / torch.linalg.norm(merged, dim=1))[:, None] * merged
    return merged.to(weight.dtype)


def full_units(model: torch.nn.Module, lora_scaling: float = 0.0, checkpoint_names: bool = False) -> list[WeightUnit]:
    """Every weight of the base model under its HF name, LoRA merged in (peft models). A tensor tied under two names
    (embeddings) comes under both: vLLM's in-place reload does not re-tie lm_head; a name left out keeps old weights.
    checkpoint_names: as the model's checkpoint lays them out (what vLLM's loaders read) rather than as transformers
    holds them in memory: experts fused into one tensor (Mixtral's, Qwen-MoE's) come back one per expert."""
    named = dict(model.named_parameters(remove_duplicate=False))
    to_checkpoint = checkpoint_layout(model) if checkpoint_names else None
    units = []
    for name, param in named.items():
        if ".lora_" in name or ".original_module." in name:  # adapters merge into their layer; a saved copy wins
            continue
        key = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".").replace(f".modules_to_save.{ADAPTER}.", ".")
        stem = name.split(".base_layer.")[0]
        a, b = named.get(f"{stem}.lora_A.{ADAPTER}.weight"), named.get(f"{stem}.lora_B.{ADAPTER}.weight")
        m = named.get(f"{stem}.lora_magnitude_vector.{ADAPTER}.weight")
        if ".base_layer." in name and name.endswith(".weight") and a is not None:
            make = lambda w=param, a=a, b=b, m=m: merged_weight(
                w.data, a.data, b.data, lora_scaling, None if m is None else m.data
            )
            params = (param, a, b) + ((m,) if m is not None else ())
        else:
            make, params = (lambda p=param: p.data), (param,)
        units.append(unit_of(key, param, params, make, to_checkpoint))
    return units


def unit_of(key: str, param, params: tuple, make: Callable[[], torch.Tensor], to_checkpoint) -> WeightUnit:
    """The unit of one in-memory tensor: as it is, or as the tensors to_checkpoint makes of it."""
    spec = TensorSpec.of(key, param.dtype, _shape(param))
    if to_checkpoint is None:
        return WeightUnit((spec,), params, lambda: [make()])
    layout = to_checkpoint(key, torch.empty(spec.shape, dtype=param.dtype, device="meta"))
    if list(layout) == [key]:
        return WeightUnit((spec,), params, lambda: [make()])
    specs = tuple(TensorSpec.of(name, t.dtype, t.shape) for name, t in layout.items())
    return WeightUnit(specs, params, lambda: list(to_checkpoint(key, make()).values()))


def checkpoint_layout(model: torch.nn.Module) -> Callable[[str, torch.Tensor], dict[str, torch.Tensor]]:
    """name, tensor in memory -> the checkpoint's {name: tensor} for it: transformers' own load-time conversion
    (renames, experts fused on load) reversed, as save_pretrained writes it; views of the tensor, no copies."""
    from transformers.core_model_loading import revert_weight_conversion

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft: the HF model
    return lambda name, tensor: revert_weight_conversion(base, {name: tensor})


def adapter_units(model: torch.nn.Module, dtype: torch.dtype) -> list[WeightUnit]:
    """The LoRA adapter's tensors under the names peft saves them with (the adapter name dropped), in the model's
    dtype: peft keeps adapters in fp32, vLLM serves them in the model's dtype, so sending fp32 would only double the
    bytes."""
    return [
        WeightUnit(
            (TensorSpec.of(name.replace(f".{ADAPTER}.", "."), dtype, _shape(p)),), (p,), lambda p=p: [p.data.to(dtype)]
        )
        for name, p in model.named_parameters()
        if ".lora_" in name
    ]


def unit_chunks(units: Sequence[WeightUnit], bucket_bytes: int) -> Iterator[list[WeightUnit]]:
    """Consecutive units whose tensors add up to about one bucket (a larger unit alone): what one gather holds."""
    chunk, size = [], 0
    for unit in units:
        if chunk and size + unit.nbytes > bucket_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(unit)
        size += unit.nbytes
    if chunk:
        yield chunk


def gathered_tensors(
    units: Sequence[WeightUnit],
    bucket_bytes: int,
    gather: Callable[[list], contextlib.AbstractContextManager],
    make: bool = True,
) -> Iterator[torch.Tensor | None]:
    """Each unit's tensors in order, its parameters gathered a chunk at a time (every rank of the group must
    iterate); make False: None for each, the gathers only (a rank that sends nothing makes no tensor, no LoRA merge)."""
    for chunk in unit_chunks(units, bucket_bytes):
        params = list({id(p): p for unit in chunk for p in unit.params}.values())
        with gather(params):
            for unit in chunk:
                yield from unit.make() if make else [None] * len(unit.specs)


def adapter_config_json(peft_config) -> str:
    """A peft config as the adapter_config.json peft writes (sets become sorted lists)."""
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in peft_config.to_dict().items()}
    return json.dumps(config, default=str)
