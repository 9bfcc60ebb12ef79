"""The run's own log (RUN/driver.log) and the one line a terminal shows for each failure a user can act on."""

from __future__ import annotations

import logging

import pytest

from dpo_ray.campaign.run_log import kept
from dpo_ray.campaign.runtime import with_restarts
from dpo_ray.cli import _run_command
from dpo_ray.groups.failures import GroupCallTimeout, NoCapacity
from dpo_ray.workers.user_code import UserCodeError


def test_a_runs_log_lines_and_the_traceback_that_ended_it_stay_in_its_directory(tmp_path):
    log = logging.getLogger("dpo_ray.test")
    with pytest.raises(ValueError) as caught:
        with kept(tmp_path):
            log.warning("round %d: started", 1)
            int("seven")
    log.warning("after the run")  # the run's file is let go of when it ends
    text = (tmp_path / "driver.log").read_text()
    assert "WARNING dpo_ray.test: round 1: started" in text and "after the run" not in text
    assert "ERROR dpo_ray.campaign.run_log: the run stopped: invalid literal for int() with base 10: 'seven'" in text
    assert "Traceback (most recent call last)" in text and '    int("seven")' in text
    assert caught.value.__notes__ == [f"(the traceback: {tmp_path / 'driver.log'})"]
    with kept(tmp_path):
        log.warning("the second attempt")
    assert (tmp_path / "driver.log").read_text().startswith(text)  # attempts append


def test_a_call_that_stays_hung_through_every_restart_says_what_was_tried(tmp_path):
    attempts = []

    def attempt(resume: bool, cause: str):
        attempts.append((resume, cause))
        raise GroupCallTimeout("policy.train_step: 1 of 2 ranks still running after 1800s")

    restarts = []
    with pytest.raises(GroupCallTimeout) as caught:
        with_restarts(attempt, resume=False, max_restarts=2, restarts=restarts)
    assert [resume for resume, _ in attempts] == [False, True, True] and len(restarts) == 2
    assert attempts[1][1] == "GroupCallTimeout: policy.train_step: 1 of 2 ranks still running after 1800s"
    assert caught.value.__notes__ == [
        "2 restart(s) from the latest checkpoint did not get past it (train.max_restarts=2); once the cluster is "
        "sound the same command resumes from there"
    ]


def failing(error: BaseException):
    def run(arguments):
        raise error

    return run


def test_failures_a_user_can_act_on_end_in_one_line_and_status_2(capsys):
    """A hung call after its restarts, a user function's failure as Ray hands it to the driver (its remote traceback
    as the message, the one-line error as its cause), no usable data, a group the cluster has no room for (a lost
    node): the message, the notes, nothing more."""
    from ray.exceptions import RayTaskError

    from dpo_ray.data.errors import NoUsableData

    hung = GroupCallTimeout("policy.train_step: 1 of 2 ranks still running after 1800s")
    hung.add_note("(the traceback: RUN/driver.log)")
    cause = UserCodeError("reward.fn=m:f raised KeyError: 'x' on prompt 'p', response 'r'")
    remote = RayTaskError("WorkerActor.call", "Traceback ... 40 lines", cause).as_instanceof_cause()
    cases = {
        hung: "dpo-ray online: policy.train_step: 1 of 2 ranks still running after 1800s\n"
        "  (the traceback: RUN/driver.log)\n",
        remote: f"dpo-ray online: {cause}\n",
        NoUsableData("no usable prompts in p.jsonl: 2 rows"): "dpo-ray online: no usable prompts in p.jsonl: 2 rows\n",
        NoCapacity("policy group: 2 x {'CPU': 1.0} with PACK placement did not fit"): "dpo-ray online: policy group: "
        "2 x {'CPU': 1.0} with PACK placement did not fit\n",
    }
    for error, expected in cases.items():
        assert _run_command("online", failing(error), []) == 2
        assert capsys.readouterr().err == expected
    with pytest.raises(KeyError):  # a bug of ours keeps its traceback
        _run_command("online", failing(KeyError("x")), [])


def test_a_signal_leaves_one_line_in_the_runs_log_and_no_traceback(tmp_path):
    import signal

    from dpo_ray.campaign.interrupts import RunInterrupted

    with pytest.raises(RunInterrupted):
        with kept(tmp_path):
            raise RunInterrupted(signal.SIGTERM)
    text = (tmp_path / "driver.log").read_text()
    assert text.endswith("WARNING dpo_ray.campaign.run_log: the run stopped: SIGTERM\n") and "Traceback" not in text
