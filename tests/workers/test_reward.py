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


def test_a_rule_and_a_judge_function_score_in_a_process_that_never_imports_torch():
    """A rule's or judge function's actor is started for a few string calls: it loads neither torch nor the device
    helpers (~1.3 s of imports on this box), only the model reward worker does."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dpo_ray.workers.judge import JudgeFnWorker\n"
        "from dpo_ray.workers.reward import RuleRewardWorker\n"
        "print(RuleRewardWorker('dpo_ray.tasks.number_words:reward').score([('Write 7 in words.', 'seven')]))\n"
        "print(JudgeFnWorker('dpo_ray.tasks.number_words:judge').judge([('Write 7 in words.', 'seven', 'sevn')]))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'deepspeed') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[1.0]", "['A']", "[]"]


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
