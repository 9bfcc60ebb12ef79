"""The memory estimate behind `dpo-ray plan` and deepspeed.zero_stage=auto, against numbers computed another way:
what autograd saves, DeepSpeed's own ZeRO-3 estimate."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dpo_ray.schema import RunConfig
from dpo_ray.sizing.memory_estimate import GIB, layer_activation_bytes, policy_rank, policy_zero_stage
from dpo_ray.sizing.model_shape import ModelShape, lora_setting, model_shape
from dpo_ray.sizing.zero_stage import model_states

from ..saved_tensors import saved_for_backward

LLAMA_70B = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    hidden_size=8192,
    intermediate_size=28672,
    num_attention_heads=64,
    num_hidden_layers=80,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    tie_word_embeddings=False,
)
LLAMA_8B = dict(LLAMA_70B, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_hidden_layers=32)


def config_dir(tmp_path, name: str, config: dict) -> str:
    """A model directory holding only a config.json (no weights), as a user plans a 70B run on a laptop."""
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def test_a_config_alone_gives_the_exact_parameter_counts(tmp_path):
    all_linear, qv = lora_setting(16, "all-linear"), lora_setting(8, "q_proj,v_proj")
    shape = model_shape(config_dir(tmp_path, "70b", LLAMA_70B), lora=(all_linear, qv))
    assert shape.params == 70_553_706_496  # Llama-3-70B's published count
    assert shape.largest_module_params == 128256 * 8192  # an embedding (the output layer is as large)
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (80, 8, 128)
    # LoRA adds r x (in + out) per adapted Linear: all-linear leaves out the output layer
    q, kv, o, mlp = (8192, 8192), (8192, 1024), (8192, 8192), 3 * (8192 + 28672)
    per_layer = 16 * (sum(q) + 2 * sum(kv) + sum(o) + mlp)
    assert shape.trainable(all_linear) == 80 * per_layer
    assert shape.trainable(qv) == 80 * 8 * (sum(q) + sum(kv))


@pytest.mark.parametrize(
    "variant",
    [{}, {"use_dora": True}, {"modules_to_save": ["lm_head"]}, {"bias": "all"}, {"bias": "lora_only"}],
    ids=["lora", "dora", "modules_to_save", "bias-all", "bias-lora_only"],
)
def test_what_a_lora_setting_trains_is_what_peft_trains(tmp_path, variant):
    """From the config alone against peft's own count on the built model (a Qwen2-shaped model: q, k, v have biases)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    path = tmp_path / "qwen2"
    config.save_pretrained(path)
    setting = lora_setting(4, "all-linear", variant.get("use_dora", False), tuple(variant.get("modules_to_save", ())),
                           variant.get("bias", "none"))  # fmt: skip
    shape = model_shape(str(path), lora=(setting,))
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_config(config), LoraConfig(r=4, target_modules="all-linear", **variant)
    )
    assert shape.trainable(setting) == peft_model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_activations_per_token_and_layer_are_what_autograd_saves(dtype, attention):
    """Every tensor a Llama's decoder layers save for backward, counted once by storage (weights left out): the
    difference between 4 and 2 layers, per token and layer, against the formula."""

    def saved_bytes(layers: int, tokens: int, checkpointing: bool = False) -> int:
        config = LlamaConfig(
            vocab_size=512,
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=layers,
            num_attention_heads=8,
            num_key_value_heads=2,
            attn_implementation=attention,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(dtype).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        ids = torch.randint(0, 512, (1, tokens))
        return saved_for_backward(model, lambda: model.model(input_ids=ids, use_cache=False))

    tokens = 256
    measured = (saved_bytes(4, tokens) - saved_bytes(2, tokens)) / 2 / tokens
    shape = ModelShape(0, 0, 256, 688, 4, 8, 2, 32, 512, 1024, 0, {})
    estimated = layer_activation_bytes(shape, dtype.itemsize, tokens if attention == "eager" else 0)
    assert estimated == pytest.approx(measured, rel=0.1)
    if attention == "sdpa":  # checkpointing keeps each layer's input: hidden x dtype bytes per token, exactly
        kept = (saved_bytes(4, tokens, True) - saved_bytes(2, tokens, True)) / 2 / tokens
        assert kept == 256 * dtype.itemsize


def test_zero3_model_states_match_deepspeeds_own_estimate(tmp_path):
    """DeepSpeed's estimate_zero3_model_states_mem_needs (18 bytes a parameter over the GPUs: bf16 weights, fp32
    gradients, fp32 master weights and Adam's moments; offloading moves them to the nodes' memory), for a 70B model
    on 4 x 8 GPUs, without its largest-layer term and buffer factor (which the plan counts as ZeRO-3's gathers)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as deepspeed_estimate

    shape = model_shape(config_dir(tmp_path, "70b", LLAMA_70B))
    p, nodes, per_node = shape.params, 4, 8
    world = nodes * per_node

    def ours(optimizer: bool, params: bool):
        return model_states(3, world, p, p, 2, True, True, offload_optimizer=optimizer, offload_param=params)

    for optimizer, params in [(False, False), (True, False), (True, True)]:
        host, gpu, largest = deepspeed_estimate(p, shape.largest_module_params, per_node, nodes, optimizer, params)
        states = ours(optimizer, params)
        assert states.device == pytest.approx(gpu - largest, rel=1e-6)
        if optimizer:  # DeepSpeed's host figure is per node, with a 1.5 buffer factor, which the plan counts too
            assert states.host * per_node == pytest.approx(host / 1.5, rel=1e-6)
            cfg = gpu_run(deepspeed__offload_optimizer="cpu", deepspeed__offload_param="cpu" if params else "none")
            planned = next(p.bytes for p in policy_rank(cfg, shape, world, 3).host if p.name == "offloaded states")
            assert planned * per_node == pytest.approx(host, rel=1e-6)


def gpu_run(**changes) -> RunConfig:
    cfg = RunConfig()
    cfg.cluster.gpus_per_rank = 1.0
    for dotted, value in changes.items():
        section, name = dotted.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def test_each_round_plans_the_host_copy_of_what_a_rank_holds_of_the_trainable_weights(tmp_path):
    """online.reference_update=each_round keeps the round's starting weights in host memory: 70B in bf16 over 32
    ZeRO-3 ranks is 2 bytes x 70.55e9 / 32 per rank; with a LoRA adapter only the adapter, whole below stage 3."""
    qv = lora_setting(8, "q_proj,v_proj")
    shape = model_shape(config_dir(tmp_path, "70b", LLAMA_70B), lora=(qv,))

    def snapshot(cfg, stage):
        return sum(p.bytes for p in policy_rank(cfg, shape, 32, stage).host if p.name == "round-start snapshot")

    assert snapshot(gpu_run(), 3) == 0
    assert snapshot(gpu_run(online__reference_update="each_round"), 3) == 2 * 70_553_706_496 / 32
    lora = gpu_run(online__reference_update="each_round")
    lora.model.lora.enabled, lora.model.lora.r, lora.model.lora.target_modules = True, 8, "q_proj,v_proj"
    assert snapshot(lora, 2) == 2 * 80 * 8 * (8192 + 8192 + 8192 + 1024)


def test_auto_picks_the_lowest_stage_at_which_a_rank_fits(tmp_path):
    shape_8b = model_shape(config_dir(tmp_path, "8b", LLAMA_8B), lora=(lora_setting(8, "all-linear"),))
    gb80 = 80 * GIB
    # 8B full fine-tune on 4 x 80 GB: stage 2 still holds the whole 15 GB of weights beside 24 GiB of activations, the
    # gradient buckets and the margins (88 GiB); stage 3 partitions them (77 GiB)
    assert policy_zero_stage(gpu_run(), shape_8b, 4, gb80) == 3
    assert (
        policy_rank(gpu_run(), shape_8b, 4, 2).device_total > gb80 > policy_rank(gpu_run(), shape_8b, 4, 3).device_total
    )
    # gradient checkpointing keeps 2 GiB of the activations: stage 2 fits
    assert policy_zero_stage(gpu_run(model__gradient_checkpointing=True), shape_8b, 4, gb80) == 2
    # twice the micro-batch fits at no stage: the highest, and the plan says what overflows
    bigger = gpu_run(train__micro_batch_size=8)
    assert policy_zero_stage(bigger, shape_8b, 4, gb80) == 3 and policy_rank(bigger, shape_8b, 4, 3).device_total > gb80
    # LoRA: frozen weights and a small adapter fit at stage 1 (bf16 never runs at stage 0)
    lora = gpu_run()
    lora.model.lora.enabled = True
    assert policy_zero_stage(lora, shape_8b, 4, gb80) == 1
    # the tiny CPU run: plain data parallel in float32
    assert policy_zero_stage(RunConfig(), shape_8b, 2, 1e15) == 0


MIXTRAL_8X7B = dict(
    architectures=["MixtralForCausalLM"],
    model_type="mixtral",
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_hidden_layers=32,
    num_key_value_heads=8,
    vocab_size=32000,
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=32768,
    tie_word_embeddings=False,
)


def test_a_mixture_of_experts_counts_every_expert_held_and_the_two_a_token_runs_through(tmp_path, capsys):
    """Mixtral-8x7B's published counts: 46.7B parameters held, 12.9B active; by hand, 32 layers of 8 experts of
    3 x 4096 x 14336 weights, 6 of 8 idle for a token. ZeRO-3 gathers a layer's fused experts at once."""
    from dpo_ray.cli import main

    path = config_dir(tmp_path, "mixtral", MIXTRAL_8X7B)
    shape = model_shape(path)
    idle = 32 * 8 * 3 * 4096 * 14336 * 6 // 8
    assert shape.params == 46_702_792_704 and shape.active_params == shape.params - idle == 12_879_925_248
    assert shape.experts == (8, 2) and shape.largest_module_params == 8 * 3 * 14336 * 4096  # one module holds them all
    assert model_shape(config_dir(tmp_path, "70b", LLAMA_70B)).active_params == 0  # dense: all of it
    main(["plan", "train", f"model.path={path}", "cluster=multi_node_70b", "--nodes=4"])
    assert (
        "policy model: 46.70B parameters (12.88B active: 2 of 8 experts a token), 32 layers" in capsys.readouterr().out
    )
