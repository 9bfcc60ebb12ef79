"""Reward workers in one process: a rule by import path, a sequence-classification model, and their checks."""

from __future__ import annotations

import pytest
import torch

from dpo_ray.tasks.number_words import prompt
from dpo_ray.workers.reward import ModelRewardWorker, RuleRewardWorker, check_rewards


def test_rule_reward_scores_the_user_text_of_string_and_message_prompts():
    worker = RuleRewardWorker("dpo_ray.tasks.number_words:reward")
    items = [
        (prompt(42), "forty-two"),
        ([{"role": "user", "content": prompt(42)}], "fourty-two"),
        (prompt(7), " seven "),
    ]
    assert worker.score(items) == [1.0, 0.0, 1.0]


def test_bad_rule_paths_and_a_reward_models_bad_outputs_name_the_reward():
    with pytest.raises(ValueError, match="reward.fn='no_such_module:f': cannot import"):
        RuleRewardWorker("no_such_module:f")
    with pytest.raises(ValueError, match="reward rm: returned 1 scores for 2 responses"):
        check_rewards("rm", [1.0], 2)
    with pytest.raises(ValueError, match="score 1 is 'high'"):
        check_rewards("rm", [1.0, "high"], 2)
    assert check_rewards("rule", [True, 0], 2) == [1.0, 0.0]


def test_reward_model_scores_each_conversation_as_one_unpadded_forward_does(reward_model_dir, tokenizer):
    from transformers import AutoModelForSequenceClassification

    worker = ModelRewardWorker(reward_model_dir, micro_batch_size=2, max_length=64)
    items = [
        (prompt(5), "five"),
        (prompt(123), "one hundred twenty-three"),
        ([{"role": "user", "content": prompt(9)}], "nine"),
    ]
    scores = worker.score(items)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    for (p, r), score in zip(items, scores):
        messages = (p if isinstance(p, list) else [{"role": "user", "content": p}]) + [
            {"role": "assistant", "content": r}
        ]
        ids = tokenizer(
            tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False, return_tensors="pt"
        )
        with torch.no_grad():
            assert score == pytest.approx(model(**ids).logits[0, 0].item(), abs=1e-5)
    assert len(set(scores)) == 3
