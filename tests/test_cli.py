import pytest

from dpo_ray.cli import compose, help_text, main
from dpo_ray.config import RunConfig


def test_default_config_is_the_embedded_preset_and_overrides_apply():
    cfg = compose(["algo.beta=0.2", "cluster.policy_ranks=3", "data.train_files=[a.jsonl,b.jsonl]"])
    assert isinstance(cfg, RunConfig)
    assert cfg.model.path == "embedded" and cfg.algo.rpo_alpha == 1.0 and cfg.train.lr == 3e-4
    assert cfg.algo.beta == 0.2 and cfg.cluster.policy_ranks == 3 and cfg.data.train_files == ["a.jsonl", "b.jsonl"]
    assert compose(["train=default", "algo=dpo"]).train.lr == 5e-7


def test_unknown_keys_and_wrong_types_are_rejected():
    with pytest.raises(Exception, match="algo.betta"):
        compose(["algo.betta=0.2"])
    with pytest.raises(Exception, match="policy_ranks"):
        compose(["cluster.policy_ranks=two"])


def test_help_lists_every_option_and_preset(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "algo.beta=0.1" in text and "cluster.placement='PACK'" in text and "model.lora.r=8" in text
    assert "train: default, online_tiny, tiny" in text and "dpo-ray online" in text
    assert all(
        f"  {name}=" in help_text()
        for name in (
            "data.on_error",
            "train.max_grad_norm",
            "reference.cache",
            "online.rounds",
            "reward.fn",
            "rollout.kv_cache_memory_mb",
        )
    )


def test_online_config_composes_with_its_own_training_preset():
    cfg = compose(["online.rounds=3", "online.samples_per_prompt=8"], "online")
    assert cfg.online.rounds == 3 and cfg.online.samples_per_prompt == 8
    assert cfg.train.lr_scheduler == "constant" and cfg.train.warmup_steps == 2 and cfg.output_dir == "runs/online"
