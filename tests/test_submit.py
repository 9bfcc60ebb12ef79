"""`dpo-ray submit` against a job server whose agent is not up yet (a Ray head just started, or a busy one)."""

from __future__ import annotations

import pytest

from dpo_ray.submit import NO_AGENT, submit_when_agent_up


class JobServer:
    """Answers as Ray's job server does: refuses with `refusal` for the first `refusals` submissions."""

    def __init__(self, refusals: int, refusal: str = f"Request failed with status code 500: {NO_AGENT}, try later."):
        self.refusals, self.refusal, self.calls = refusals, refusal, []

    def submit_job(self, entrypoint, runtime_env):
        self.calls.append((entrypoint, runtime_env))
        if len(self.calls) <= self.refusals:
            raise RuntimeError(self.refusal)
        return "raysubmit_1"


def test_a_submission_waits_for_the_job_agent_and_is_sent_once_it_is_up(capsys):
    server = JobServer(refusals=2)
    assert submit_when_agent_up(server, "python -m dpo_ray.cli train", {"pip": ["x"]}, poll_s=0.01) == "raysubmit_1"
    assert server.calls == [("python -m dpo_ray.cli train", {"pip": ["x"]})] * 3
    assert capsys.readouterr().out.count("job agent is not up yet") == 2


def test_other_refusals_and_an_agent_that_never_comes_are_raised():
    bad = JobServer(refusals=1, refusal="Request failed with status code 400: runtime_env is invalid")
    with pytest.raises(RuntimeError, match="runtime_env is invalid"):
        submit_when_agent_up(bad, "e", None, poll_s=0.01)
    assert len(bad.calls) == 1  # not retried
    never = JobServer(refusals=10**6)
    with pytest.raises(RuntimeError, match=NO_AGENT):
        submit_when_agent_up(never, "e", None, wait_s=0.1, poll_s=0.01)
    assert 5 <= len(never.calls) <= 11
