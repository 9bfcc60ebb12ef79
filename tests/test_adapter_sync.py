"""Adapter or merged weights into the engines, from the config alone."""

from dpo_ray.adapter_sync import syncs_adapter
from dpo_ray.schema import RunConfig


def test_lora_policies_sync_their_adapter_on_gpus_and_merged_weights_on_cpu_unless_told():
    cfg = RunConfig()
    assert not syncs_adapter(cfg)  # no LoRA: always the full weights
    cfg.model.lora.enabled = True
    assert not syncs_adapter(cfg)
    cfg.cluster.gpus_per_rank = 1
    assert syncs_adapter(cfg)
    cfg.rollout.lora_sync = "merged"
    assert not syncs_adapter(cfg)
    cfg.cluster.gpus_per_rank, cfg.rollout.lora_sync = 0, "adapter"
    assert syncs_adapter(cfg)
