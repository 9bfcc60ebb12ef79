"""The user's functions on the workers, in one process (the main thread, as in a Ray actor): a call that raises,
returns no number or no text, or never returns is named with the option and its input, within reward.timeout_s."""

from __future__ import annotations

import math
import time

import pytest

from dpo_ray.workers.judge import JudgeFnWorker
from dpo_ray.workers.reward import RuleRewardWorker
from dpo_ray.workers.user_code import BoundedCaller, Overran, UserCodeError


def picky(prompt_text: str, response: str):
    """A reward with the faults users' rewards have, one per response."""
    if response == "boom":
        raise KeyError("label")
    if response == "nan":
        return math.nan
    if response == "text":
        return "high"
    if response == "hang":
        time.sleep(5)
    return float(len(response))


def slow_judge(prompt_text: str, a: str, b: str):
    time.sleep(5)
    return "A"


def test_a_reward_function_that_fails_is_named_with_the_prompt_and_response_it_failed_on():
    worker = RuleRewardWorker("tests.workers.test_user_code:picky", timeout_s=0.5)
    assert worker.score([("p", "ab"), ([{"role": "user", "content": "q"}], "abc")]) == [2.0, 3.0]
    where = "on prompt 'Write 7 in words.', response '{}'"
    expected = {
        "boom": "raised KeyError: 'label' " + where,
        "nan": "returned nan, not a finite number, " + where,
        "text": "returned 'high', not a finite number, " + where,
        "hang": "gave no answer within 0.5s (reward.timeout_s) " + where + ": it hangs, or needs a longer bound",
    }
    for response, message in expected.items():
        began = time.perf_counter()
        with pytest.raises(UserCodeError) as caught:
            worker.score([("Write 1 in words.", "one"), ("Write 7 in words.", response)])
        assert str(caught.value) == "reward.fn=tests.workers.test_user_code:picky " + message.format(response)
        assert time.perf_counter() - began < 2.5  # the hung call is stopped at its bound
    assert worker.score([("p", "abcd")]) == [4.0]


def test_a_judge_function_that_hangs_or_answers_no_text_is_named_with_its_requests():
    worker = JudgeFnWorker("tests.workers.test_user_code:slow_judge", timeout_s=0.2)
    with pytest.raises(UserCodeError, match=r"gave no answer within 0.2s \(reward.timeout_s\) on prompt 'p', "):
        worker.judge([("p", "a", "b")])
    long = "x" * 200
    with pytest.raises(UserCodeError) as caught:
        JudgeFnWorker("tests.workers.test_judge:not_text").judge([(long, "a", "b")])
    assert f"answered 1, not a string, on prompt '{'x' * 77}...', response A 'a', response B 'b'" in str(caught.value)


def swallowing(seconds: float) -> float:
    """A reward that turns any error into a score, as many do."""
    try:
        time.sleep(seconds)
    except Exception:
        return 0.0
    return 1.0


def alarmed(seconds: float) -> str:
    """A verifier that bounds itself with SIGALRM, as math-verify does: it works in the main thread only."""
    import signal

    def late(signum, frame):
        raise TimeoutError("verifier bound")

    previous = signal.signal(signal.SIGALRM, late)
    signal.alarm(1)
    try:
        time.sleep(seconds)
        return "verified"
    except TimeoutError as error:
        return str(error)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_bounded_call_returns_raises_or_overruns_as_the_function_does_and_leaves_no_alarm_behind():
    import signal

    call = BoundedCaller(0.3)
    handler, (timer, _) = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    assert call(divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        call(divmod, 1, 0)
    with pytest.raises(Overran, match="no answer within 0.3s"):
        call(time.sleep, 2)
    with pytest.raises(Overran):  # a function's own `except Exception` does not swallow the bound
        call(swallowing, 2)
    assert call(sum, [1, 2]) == 3
    assert signal.getsignal(signal.SIGALRM) is handler  # and a timer set before goes on (the test runner's bound)
    assert (timer == 0) == (signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    assert BoundedCaller(5)(alarmed, 0.1) == "verified" and BoundedCaller(5)(alarmed, 3) == "verifier bound"
    assert BoundedCaller(None)(max, 1, 4) == 4  # no bound: called as it is
