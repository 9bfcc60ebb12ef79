"""The longest sequence a judge engine must hold: a judge prompt with two responses in it."""

from __future__ import annotations


def judge_max_model_len(engine_length: int, max_positions: int = 0) -> int:
    """A judge engine's max_model_len: a judge prompt holds the prompt and two responses (engine_length: the longest
    prompt + response of the run), maybe in a tokenizer twice as fine, and the template; within the judge model's
    positions (0: unknown)."""
    length = 4 * engine_length + 512
    return min(length, max_positions) if max_positions else length
