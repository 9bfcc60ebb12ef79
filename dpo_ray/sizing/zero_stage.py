"""The policy's ZeRO stages: the stages a run can use, and the bytes of model states a rank holds at each
(sizing/memory_estimate.policy_zero_stage picks the lowest that fits for deepspeed.zero_stage=auto). A stage that
fits skips the cost of the stages above it: stage 3 gathers every layer's parameters for each forward and backward,
stages 1 and 2 only split the optimizer's work."""

from __future__ import annotations

from dataclasses import dataclass

STAGES = (0, 1, 2, 3)


def stage_problem(
    stage: int, dtype: str, offload_optimizer: str, offload_param: str, saves_modules: bool = False
) -> str | None:
    """Why a run cannot use this stage (None if it can). dtype is the resolved parameter dtype; saves_modules: a LoRA
    run with model.lora.modules_to_save."""
    if saves_modules and stage == 3:
        return "model.lora.modules_to_save: peft copies those modules after ZeRO-3 has partitioned them; use stage 0-2"
    if offload_param != "none" and stage < 3:
        return f"deepspeed.offload_param={offload_param} partitions parameters, which only stage 3 does"
    if offload_optimizer == "nvme" and stage < 3:
        return "deepspeed.offload_optimizer=nvme needs stage 3"
    if offload_optimizer != "none" and stage == 0:
        return f"deepspeed.offload_optimizer={offload_optimizer} offloads partitioned optimizer states (stage >= 1)"
    if dtype != "float32" and stage == 0:
        return (
            f"model.dtype {dtype}: DeepSpeed's plain data parallel keeps no float32 master weights, so updates "
            "below the dtype's precision are lost; stage 1 keeps them (and costs about what stage 0 does)"
        )
    return None


@dataclass(frozen=True)
class ModelStates:
    """Bytes one rank holds for the model's states: on its device, and offloaded to its host."""

    weights: float
    gradients: float
    optimizer: float  # float32 master weights and the optimizer's moments
    host: float = 0.0  # what deepspeed.offload_* moved to host memory

    @property
    def device(self) -> float:
        return self.weights + self.gradients + self.optimizer


def model_states(
    stage: int,
    world: int,
    params: int,
    trainable: int,
    dtype_bytes: int,
    grad_accum_fp32: bool,
    adam: bool,
    offload_optimizer: bool = False,
    offload_param: bool = False,
) -> ModelStates:
    """What one of world ranks holds (ZeRO paper, section 3): stage 1 splits the optimizer states (float32 master
    weights, Adam's two moments), stage 2 also the gradients, stage 3 also the weights. DeepSpeed keeps a float32
    master copy at stages 1-3 even of float32 weights; stage 0 is plain torch, updating the weights in place. An
    offloaded optimizer takes the gradients' partitions to the host with it (ZeRO-Offload)."""
    weights = params * dtype_bytes / (world if stage >= 3 else 1)
    grads = trainable * (4 if grad_accum_fp32 else dtype_bytes) / (world if stage >= 2 else 1)
    per_param = (4 if stage >= 1 or dtype_bytes < 4 else 0) + (8 if adam else 0)
    optimizer = trainable * per_param / (world if stage >= 1 else 1)
    host = (optimizer + grads if offload_optimizer else 0.0) + (weights if offload_param else 0.0)
    return ModelStates(
        0.0 if offload_param else weights,
        0.0 if offload_optimizer else grads,
        0.0 if offload_optimizer else optimizer,
        host,
    )
