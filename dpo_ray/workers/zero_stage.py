"""The policy's ZeRO stage: the stages a run can use, the bytes of model states a rank holds at each, and the lowest
stage that fits (deepspeed.zero_stage=auto). A stage that fits skips the cost of the stages above it: stage 3
gathers every layer's parameters for each forward and backward, stages 1 and 2 only split the optimizer's work."""

from __future__ import annotations

AUTO_FIT_SHARE = 0.5  # model states may fill this share of a rank's device: activations and buffers need the rest
STAGES = (0, 1, 2, 3)


def stage_problem(stage: int, dtype: str, offload_optimizer: str, offload_param: str) -> str | None:
    """Why a run cannot use this stage (None if it can). dtype is the resolved parameter dtype."""
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


def model_state_bytes(
    stage: int,
    world: int,
    params: int,
    trainable: int,
    dtype_bytes: int,
    grad_accum_fp32: bool,
    adam: bool,
    offload_optimizer: bool,
) -> float:
    """Bytes one of world ranks holds for weights, gradients and optimizer states (ZeRO paper, section 3):
    stage 1 splits the optimizer states (float32 master weights below float32, Adam's two moments), stage 2 also
    the gradients, stage 3 also the weights."""
    weights = params * dtype_bytes / (world if stage >= 3 else 1)
    grads = trainable * (4 if grad_accum_fp32 else dtype_bytes) / (world if stage >= 2 else 1)
    per_param = (4 if dtype_bytes < 4 else 0) + (8 if adam else 0)
    optimizer = 0 if offload_optimizer else trainable * per_param / (world if stage >= 1 else 1)
    return weights + grads + optimizer


def auto_zero_stage(allowed: list[int], state_bytes, device_bytes: int) -> int:
    """The lowest allowed stage whose model states (state_bytes(stage)) fit AUTO_FIT_SHARE of the device; else the
    highest allowed stage."""
    for stage in allowed:
        if state_bytes(stage) <= AUTO_FIT_SHARE * device_bytes:
            return stage
    return allowed[-1]
