"""What one actor of each group holds in memory, by part, estimated from the model's shape and the run's options.

Every formula is written out here, in bytes (checked against measurement: tests/sizing/test_memory_estimate.py and
the RSS test in tests/groups/test_policy_group.py):
- model states of a policy rank: sizing/zero_stage.model_states (ZeRO paper; DeepSpeed's float32 master copy);
- ZeRO's buffers (zero_buffers): stage 3's gathered parameters, up to deepspeed.max_live_parameters; at stages 1-3
  the gradient reduce bucket (and at stage 3 the reduce-scatter's output) and the step's float32 copy of the gradient
  partition; at stage 3 each rank reads a whole weights file while loading (host memory);
- activations kept for backward, per token and decoder layer of a Llama-style model (a = dtype bytes, h hidden,
  q = heads x head_dim, kv = kv_heads x head_dim, I intermediate): two RMSNorms keep their float32 input and their
  output (2 (4h + a h)); q, k and v projections and the rotated q and k (a (2q + 3kv)); the attention output (a q);
  SwiGLU's gate, up, activation and product (4 a I; with model.mlp_tiles only one tile's, while it runs); sequence
  parallelism one more query-sized tensor (a q, one side of its all-to-alls: measured). Eager attention also keeps
  its float32 probabilities and, below float32, their cast ((4 + a) heads S for a sequence of S). Gradient
  checkpointing keeps each layer's input (a h) and one layer's full set while it recomputes it;
- a micro-batch holds at most micro_batch_size x 2 x max_length tokens (chosen and rejected, whatever the layout),
  a rank 1/sequence_parallel_size of them, and while attention runs its all-to-all buffers (DeepSpeed-Ulysses);
  the log-probs take the vocabulary in chunks of model.logits_chunk_mb, beside the final hidden states in float32;
- an inference forward (reference, reward model) holds one layer's activations at a time;
- a vLLM engine's GPUs hold weights / tensor_parallel_size, the KV cache (2 x layers x kv_heads x head_dim x a per
  token, kv heads split over the tensor-parallel GPUs) and its forward's activations (the batch of
  ENGINE_BATCH_TOKENS tokens, one layer at a time, and the sampler's float32 logits for ENGINE_MAX_SEQS sequences);
  on GPU it takes rollout.gpu_memory_utilization of each and gives the KV cache what the rest leaves;
- each process pays a fixed framework cost: GPU_PROCESS_BYTES (CUDA context, NCCL buffers, the caching allocator's
  slack) on its GPU, and HOST_PROCESS_BYTES of host memory (Python, torch, DeepSpeed, Ray);
- on GPUs, FRAGMENTATION of the estimate is added for the caching allocator's fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import RunConfig
from .model_shape import ModelShape, lora_setting, model_shape
from .zero_stage import STAGES, ModelStates, model_states, stage_problem

GIB = 1 << 30
GPU_PROCESS_BYTES = int(1.5 * GIB)
HOST_PROCESS_BYTES = 1 * GIB
FRAGMENTATION = 0.10
ENGINE_BATCH_TOKENS = 8192  # vLLM's default max_num_batched_tokens
ENGINE_MAX_SEQS = 256  # vLLM's default max_num_seqs
OFFLOAD_BUFFER_FACTOR = 1.5  # DeepSpeed's estimate_zero3_model_states_mem_needs: host buffers beside the states


@dataclass(frozen=True)
class Part:
    name: str
    bytes: float
    note: str = ""


@dataclass
class ActorMemory:
    """One actor's parts: on its GPU (device) and in its node's memory (host). A CPU actor's parts are all host."""

    device: list[Part]
    host: list[Part]
    notes: list[str]
    shortfall: float = 0.0  # bytes missing for the actor to start at all (an engine's KV cache for one sequence)
    max_model_len: int = 0  # an engine's: the one sequence its KV cache must hold
    rank0_host: float = 0.0  # host bytes rank 0 alone adds for a while: the model gathered whole to save it (ZeRO-3)
    rank0_device: float = 0.0  # GPU bytes policy rank 0 holds while it sends the weights (0: it sends none)

    @property
    def device_total(self) -> float:
        return sum(p.bytes for p in self.device)

    @property
    def host_total(self) -> float:
        return sum(p.bytes for p in self.host)

    @property
    def device_peak(self) -> float:
        """The most the actor's GPU holds: a step's parts, or rank 0's while it sends the weights."""
        return max(self.device_total, self.rank0_device)


def dtype_bytes(cfg: RunConfig, dtype: str | None = None) -> int:
    """Bytes per parameter of the run's model dtype (auto: bfloat16 on GPU, float32 on CPU)."""
    dtype = str(dtype or cfg.model.dtype)
    if dtype == "auto":
        return 2 if cfg.cluster.gpus_per_rank > 0 else 4
    return 4 if dtype == "float32" else 2


def sequence_length(cfg: RunConfig, shape: ModelShape) -> int:
    """The longest sequence a pair's response can make: data.max_length, else the model's positions."""
    return cfg.data.max_length or shape.max_positions or 4096


def micro_batch_tokens(cfg: RunConfig, shape: ModelShape) -> int:
    return cfg.train.micro_batch_size * 2 * sequence_length(cfg, shape)


def layer_activation_bytes(
    shape: ModelShape, a: int, eager_sequence: int = 0, sequence_parallel: bool = False, tiled_mlp: bool = False
) -> float:
    """Bytes one decoder layer keeps for backward, per token (see the module's docstring)."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    mlp = 0 if tiled_mlp else 4 * a * shape.intermediate  # a tiled MLP keeps only its input (the norm's output)
    kept = 2 * (4 * shape.hidden + a * shape.hidden) + a * (2 * q + 3 * kv) + a * q + mlp
    kept += a * q if sequence_parallel else 0  # a query-sized tensor more: one side of the all-to-alls
    return kept + (4 + (a if a < 4 else 0)) * shape.heads * eager_sequence


def training_activations(cfg: RunConfig, shape: ModelShape, a: int) -> list[Part]:
    """Activations of one micro-batch at the longest sequences the data allows (a rank's shard of its positions under
    sequence parallelism), and the log-probs' vocabulary chunk."""
    sp = cfg.cluster.sequence_parallel_size
    tokens = micro_batch_tokens(cfg, shape) // sp
    eager = sequence_length(cfg, shape) * (1 if str(cfg.data.layout) == "padded" else 2)
    attention = str(cfg.model.attn_implementation)
    tiles = cfg.model.mlp_tiles
    per_layer = layer_activation_bytes(shape, a, eager if attention == "eager" else 0, sp > 1, tiles > 1)
    if cfg.model.gradient_checkpointing:
        kept = tokens * (shape.layers * a * shape.hidden + per_layer)
        how = "gradient checkpointing: each layer's input, one layer recomputed"
    else:
        kept = tokens * shape.layers * per_layer
        how = f"{per_layer / 1024:.0f} KiB per token per layer"
    logits = (cfg.model.logits_chunk_mb << 20) + tokens * shape.hidden * 4
    share = f" / sequence_parallel_size {sp}" if sp > 1 else ""
    parts = [
        Part(
            "activations", kept, f"{tokens} tokens (micro_batch_size x 2 x {sequence_length(cfg, shape)}{share}); {how}"
        ),
        Part("log-prob chunk", logits, f"logits_chunk_mb={cfg.model.logits_chunk_mb}, float32 final hidden states"),
    ]
    if tiles > 1:  # the tile being computed holds its gate, up, activation and product
        tile = 4 * a * shape.intermediate * -(-tokens // tiles)
        parts.append(Part("MLP tile", tile, f"model.mlp_tiles={tiles}: one tile's intermediate tensors"))
    if sp > 1:  # one layer's queries, keys, values and output, each sent and received once
        q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        parts.append(Part("sequence all-to-all", 2 * a * tokens * (2 * q + 2 * kv), "one layer's, sent and received"))
    return parts


def inference_activations(shape: ModelShape, a: int, tokens: int) -> Part:
    return Part("activations", tokens * layer_activation_bytes(shape, a), f"{tokens} tokens, one layer at a time")


def framework(gpu: bool, device: list[Part]) -> list[Part]:
    """The fixed cost of a process on its GPU (and the allocator's fragmentation of what it holds)."""
    if not gpu:
        return []
    held = sum(p.bytes for p in device)
    return [
        Part("CUDA context, NCCL, allocator", GPU_PROCESS_BYTES, "stated margin"),
        Part("fragmentation", FRAGMENTATION * held, f"{FRAGMENTATION:.0%} of the above"),
    ]


def split(gpu: bool, device: list[Part], host: list[Part], notes: list[str], margin: bool = True) -> ActorMemory:
    """An actor's parts placed: on GPU the device parts (and, with margin, their framework cost); on CPU everything
    is host memory."""
    host = host + [Part("process", HOST_PROCESS_BYTES, "Python, torch, DeepSpeed, Ray (stated margin)")]
    if gpu:
        return ActorMemory(device + (framework(True, device) if margin else []), host, notes)
    return ActorMemory([], device + host, notes)


def loading_buffer(shape: ModelShape, a: int) -> Part:
    """ZeRO-3 loads the checkpoint a file at a time on every rank before keeping its partition: the largest file
    (5 GiB, HF's usual shard, when only a config is given) stays in the host memory the allocator holds."""
    size = shape.largest_file_bytes or min(shape.params * a, 5 * GIB)
    return Part("checkpoint loading", size, "the largest weights file, read whole by each rank")


def run_lora(cfg: RunConfig) -> tuple:
    """The run's LoRA setting as model_shape keys it."""
    lora = cfg.model.lora
    return lora_setting(lora.r, lora.target_modules, lora.use_dora, tuple(lora.modules_to_save), str(lora.bias))


def policy_shape(cfg: RunConfig, model_path: str) -> ModelShape:
    """The policy model's shape, with its LoRA adapter's size when the run trains one."""
    adapters = (run_lora(cfg),) if cfg.model.lora.enabled else ()
    return model_shape(model_path, cfg.model.trust_remote_code, adapters)


def rank_model_states(cfg: RunConfig, shape: ModelShape, world: int, stage: int) -> ModelStates:
    """The model states one of world policy ranks holds at this stage, with the run's dtype, optimizer and offload."""
    ds, lora = cfg.deepspeed, cfg.model.lora
    return model_states(
        stage,
        world,
        shape.params,
        shape.trainable(run_lora(cfg) if lora.enabled else None),
        dtype_bytes(cfg),
        ds.grad_accum_dtype == "fp32",
        cfg.train.optimizer == "adamw",
        ds.offload_optimizer != "none",
        ds.offload_param != "none",
    )


def zero_buffers(cfg: RunConfig, shape: ModelShape, stage: int, a: int, trainable: int, world: int) -> list[Part]:
    """What ZeRO holds beside the partitions. Stage 3 gathers parameters (DeepSpeed keeps those it will reuse within
    stage3_max_reuse_distance, so up to deepspeed.max_live_parameters, or the whole model when it is smaller).
    Training at stages 1-3 adds the gradient reduce bucket (deepspeed.reduce_bucket_size elements, or all trainable
    ones), at stage 3 the reduce-scatter's output (the rank's share of a bucket, before it is copied into the
    partition) and, during the optimizer step, the float32 copy of the rank's gradient partition DeepSpeed flattens."""
    ds, parts = cfg.deepspeed, []
    if stage >= 3:
        parts.append(Part("ZeRO-3 gathers", min(shape.params, ds.max_live_parameters) * a, "max_live_parameters"))
    if stage >= 1 and trainable:
        grad = 4 if ds.grad_accum_dtype == "fp32" else a
        bucket = min(trainable, ds.reduce_bucket_size) * grad
        parts.append(Part("reduce bucket", bucket, "reduce_bucket_size"))
        if stage >= 3:
            parts.append(Part("reduce-scatter output", bucket / world, "a bucket's share"))
        if ds.offload_optimizer == "none":
            parts.append(Part("step's gradient copy", trainable * 4 / world, "the partition, flattened in float32"))
    return parts


def policy_rank(cfg: RunConfig, shape: ModelShape, world: int, stage: int, sends: bool = False) -> ActorMemory:
    """A policy rank at this ZeRO stage; sends: its rank 0 streams the weights to engines (or a moving reference)."""
    a, gpu = dtype_bytes(cfg), cfg.cluster.gpus_per_rank > 0
    states = rank_model_states(cfg, shape, world, stage)
    device = [
        Part("weights", states.weights, f"ZeRO stage {stage}" + (", partitioned" if stage >= 3 else ", whole")),
        Part("gradients", states.gradients, f"{cfg.deepspeed.grad_accum_dtype}, {'split' if stage >= 2 else 'whole'}"),
        Part("optimizer states", states.optimizer, f"{cfg.train.optimizer}, float32 master weights"),
    ]
    trainable = shape.trainable(run_lora(cfg) if cfg.model.lora.enabled else None)
    device += zero_buffers(cfg, shape, stage, a, trainable, world)
    device += training_activations(cfg, shape, a)
    offloaded = states.host * OFFLOAD_BUFFER_FACTOR
    host = (
        [Part("offloaded states", offloaded, "deepspeed.offload_*, x1.5 as DeepSpeed's estimate")] if offloaded else []
    )
    host += [loading_buffer(shape, a)] if stage >= 3 else []
    if cfg.online.reference_update == "each_round":  # the trainable weights this rank holds, as the round began
        held = trainable * a / (world if stage >= 3 else 1)
        host.append(Part("round-start snapshot", held, "online.reference_update=each_round, the KL to it"))
    memory = split(gpu, [p for p in device if p.bytes], host, [])
    if stage >= 3:  # saving final/ gathers the partitions into rank 0's host memory (the adapter alone with LoRA)
        memory.rank0_host = trainable * a if cfg.model.lora.enabled else shape.params * a
        memory.notes.append(f"rank 0 gathers {memory.rank0_host / GIB:.1f} GiB into host memory to save the model")
    if sends and gpu:
        sender_gpu(cfg, shape, stage, memory)
    return memory


FREED_FOR_SYNC = (
    "activations",
    "log-prob chunk",
    "MLP tile",
    "sequence all-to-all",
    "ZeRO-3 gathers",
)  # a sync runs between steps


def sender_parts(cfg: RunConfig, shape: ModelShape, stage: int) -> list[Part]:
    """What policy rank 0 adds on its GPU to send the weights: the send bucket; at ZeRO-3 the parameters gathered
    for it (a bucket's worth of whole tensors, or the largest tensor); with the LoRA merged in, one merge at a time of
    the largest decoder projection (W and B @ A in float32, the result cast back)."""
    from ..adapter_sync import syncs_adapter

    a, bucket = dtype_bytes(cfg), cfg.rollout.sync_bucket_mb << 20
    parts = [Part("send bucket", bucket, f"rollout.sync_bucket_mb={cfg.rollout.sync_bucket_mb}")]
    if stage >= 3:
        parts.append(Part("gathered chunk", max(bucket, shape.largest_module_params * a), "a bucket of tensors"))
    if cfg.model.lora.enabled and not syncs_adapter(cfg):
        parts.append(Part("LoRA merge", shape.hidden * shape.intermediate * (8 + a), "float32, one projection"))
    return parts


def sender_gpu(cfg: RunConfig, shape: ModelShape, stage: int, memory: ActorMemory) -> None:
    """Rank 0's GPU while it sends: the step's parts but those freed between steps, the sender's parts, the margins."""
    margins = ("CUDA context, NCCL, allocator", "fragmentation")
    kept = [p for p in memory.device if p.name not in FREED_FOR_SYNC + margins]
    sending = sender_parts(cfg, shape, stage)
    held = sum(p.bytes for p in kept + sending)
    memory.rank0_device = held * (1 + FRAGMENTATION) + GPU_PROCESS_BYTES
    memory.notes.append(
        f"rank 0 while it sends the weights: {parts_text(sending)} in place of the step's "
        f"{', '.join(FREED_FOR_SYNC)} = {memory.rank0_device / GIB:.2f}"
    )


def parts_text(parts: list[Part]) -> str:
    """'a 1.00 + b 2.00' in GiB."""
    return " + ".join(f"{p.name} {p.bytes / GIB:.2f}" for p in parts) or "0"


def reference_rank(cfg: RunConfig, shape: ModelShape, ranks: int, sharded: bool) -> ActorMemory:
    """A reference rank: a whole replica, or 1/ranks of the model under ZeRO-3 inference."""
    a, gpu = dtype_bytes(cfg), cfg.cluster.gpus_per_rank > 0
    device = [Part("weights", shape.params * a / (ranks if sharded else 1), "zero3" if sharded else "a replica")]
    device += zero_buffers(cfg, shape, 3 if sharded else 0, a, 0, ranks)
    return split(gpu, device + inference_parts(cfg, shape, a), [loading_buffer(shape, a)] if sharded else [], [])


def inference_parts(cfg: RunConfig, shape: ModelShape, a: int) -> list[Part]:
    """A reference forward's working memory: one layer's activations for a micro-batch (a rank's shard of its
    positions under sequence parallelism), the log-prob chunk."""
    chunk = cfg.model.logits_chunk_mb
    return [
        inference_activations(shape, a, micro_batch_tokens(cfg, shape) // cfg.cluster.sequence_parallel_size),
        Part("log-prob chunk", chunk << 20, f"logits_chunk_mb={chunk}"),
    ]


def kv_bytes_per_token(shape: ModelShape, a: int, tensor_parallel: int) -> float:
    """KV-cache bytes per token on one of an engine's GPUs (kv heads split over them, replicated when fewer)."""
    heads_per_gpu = max(1, -(-shape.kv_heads // tensor_parallel))
    return 2 * shape.layers * heads_per_gpu * shape.head_dim * a


def weight_sync_bytes(cfg: RunConfig, shape: ModelShape, tensor_parallel: int) -> float:
    """What a weight sync adds on each of an engine's GPUs, beside vLLM's own share: the receive bucket, the largest
    tensor whole (each worker takes whole tensors and shards them itself: Llama-3-70B's embedding is 2.1 GB), and the
    fresh copy of a layer vLLM's layer-wise reload builds (its shard: of a decoder layer, or of the largest tensor)."""
    a = dtype_bytes(cfg)
    layer = max((shape.params - shape.vocab * shape.hidden) / max(1, shape.layers), shape.largest_module_params)
    return (cfg.rollout.sync_bucket_mb << 20) + shape.largest_module_params * a + layer * a / tensor_parallel


def engine_gpu(
    cfg: RunConfig, shape: ModelShape, max_model_len: int, gpu_bytes: float, synced: bool = True
) -> ActorMemory:
    """One GPU of a vLLM engine (or, on CPU, the engine's process): weights, KV cache, activations, and for an
    engine the policy's weights are synced into, what a sync holds outside vLLM's share."""
    r, gpu = cfg.rollout, cfg.cluster.gpus_per_rank > 0
    a, tp = dtype_bytes(cfg, None if str(r.dtype) == "auto" else str(r.dtype)), r.tensor_parallel_size
    weights = shape.params * a / tp
    activations = ENGINE_BATCH_TOKENS * layer_activation_bytes(shape, a) / tp + ENGINE_MAX_SEQS * shape.vocab * 4
    per_token = kv_bytes_per_token(shape, a, tp)
    needed = per_token * max_model_len
    notes = []
    if gpu and not r.kv_cache_memory_mb:
        # vLLM takes gpu_memory_utilization of the GPU and gives the KV cache what weights and activations leave
        kv = r.gpu_memory_utilization * gpu_bytes - weights - activations - GPU_PROCESS_BYTES
        kv_note = f"what gpu_memory_utilization={r.gpu_memory_utilization} leaves"
    else:
        kv = (r.kv_cache_memory_mb or (0 if gpu else 256)) << 20
        kv_note = f"rollout.kv_cache_memory_mb={r.kv_cache_memory_mb or 256}"
    sequences = max(0.0, kv) / needed if needed else 0.0
    notes.append(
        f"KV cache {max(kv, 0.0) / GIB:.1f} GiB holds {sequences:.1f} sequences of max_model_len={max_model_len} "
        f"({per_token / 1024:.0f} KiB per token per GPU); vLLM runs up to {ENGINE_MAX_SEQS} at once, "
        f"online.samples_per_prompt={cfg.online.samples_per_prompt} per prompt"
    )
    device = [
        Part("weights", weights, f"tensor_parallel_size={tp}"),
        Part("KV cache", max(kv, 0.0), kv_note),
        Part("activations", activations, f"{ENGINE_BATCH_TOKENS} batched tokens, sampler logits"),
    ]
    if gpu:  # vLLM's memory share covers its process's CUDA context; it allocates it all at start (no fragmentation)
        device.append(Part("CUDA context, NCCL", GPU_PROCESS_BYTES, "stated margin"))
    if synced:
        sync = weight_sync_bytes(cfg, shape, tp)
        device.append(Part("weight sync", sync, f"a {r.sync_bucket_mb} MiB bucket, the largest tensor, a layer"))
    memory = split(gpu, device, [], notes, margin=False)
    memory.shortfall = max(0.0, needed - kv)  # vLLM refuses to start without room for one full sequence
    memory.max_model_len = max_model_len
    return memory


def reward_rank(cfg: RunConfig, shape: ModelShape) -> ActorMemory:
    """A reward-model replica scoring reward.micro_batch_size sequences of reward.max_length at a time."""
    a, gpu = dtype_bytes(cfg), cfg.cluster.gpus_per_rank > 0
    tokens = cfg.reward.micro_batch_size * cfg.reward.max_length
    device = [Part("weights", shape.params * a, "a replica"), inference_activations(shape, a, tokens)]
    return split(gpu, device, [], [])


def rule_worker(what: str = "a rule reward") -> ActorMemory:
    return ActorMemory([], [Part("process", HOST_PROCESS_BYTES, f"{what}: no model")], [])


def rank_bytes(memory: ActorMemory, gpu: bool) -> float:
    """What an actor needs of the memory its model lives in: its GPU's, or on CPU its host's."""
    return memory.device_total if gpu else memory.host_total


def policy_zero_stage(cfg: RunConfig, shape: ModelShape, world: int, device_bytes: float) -> int:
    """deepspeed.zero_stage, or for auto the lowest stage the run can use at which a policy rank's estimated memory
    (policy_rank) fits its device; the highest it can use when none fits."""
    ds = cfg.deepspeed
    if str(ds.zero_stage) != "auto":
        return int(str(ds.zero_stage))
    dtype = "float32" if dtype_bytes(cfg) == 4 else "bfloat16"
    saves = cfg.model.lora.enabled and bool(cfg.model.lora.modules_to_save)
    offloads = str(ds.offload_optimizer), str(ds.offload_param)
    allowed = [s for s in STAGES if not stage_problem(s, dtype, *offloads, saves)]
    gpu = cfg.cluster.gpus_per_rank > 0
    for stage in allowed:
        if rank_bytes(policy_rank(cfg, shape, world, stage), gpu) <= device_bytes:
            return stage
    return allowed[-1]
