"""Online / iterative DPO: each round the vLLM engines sample n responses per prompt from the current policy, the
reward group scores them, best vs worst become pairs, the policy trains on them against the frozen reference, and
its new weights are pushed into the engines. A campaign restarts from its last finished round."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import RunConfig
from ..data.dataset import load_pairs
from ..data.formats import Text, is_empty
from ..data.pair_stats import pair_statistics
from ..data.pairs import build_pairs
from ..data.prompts import load_prompts
from ..data.tokenize import TokenizedPair, TokenizeSettings, encode_prompt
from ..groups.policy_group import PolicyGroup
from ..groups.resources import group_needs
from ..groups.reward_group import RewardGroup
from ..groups.rollout_group import RolloutGroup
from ..objective import needs_reference
from ..report.monitors import as_metrics, round_checks, warnings
from ..tasks.pretrained import PRETRAINED, ensure_pretrained
from ..workers.device import device_spec, rank_env, rank_threads
from ..workers.models import load_tokenizer
from ..workers.rollout import Sample
from .atomic import write_dir, write_text
from .checkpoints import CheckpointStore, resume_mode
from .metrics import MetricsWriter
from .offline import accumulation_steps
from .reference import ReferenceScorer
from .runtime import ensure_ray, with_restarts
from .trainer import PolicyTrainer

log = logging.getLogger(__name__)
PHASES = ("generate", "score", "pairs", "reference", "train", "sync", "eval")
EMPTY = "EMPTY"  # marks a round directory that holds no rows
TRAIN_KEYS = ("rewards/margins", "rewards/accuracies", "loss")  # the round's last training step, kept in its row


@dataclass
class OnlineInputs:
    model_path: str
    reference_path: str
    prompts: list[Text]
    eval_prompts: list[Text]
    offline_pairs: list[TokenizedPair] = field(default_factory=list)
    default_reward: str = ""  # the task's rule, used when the config names no reward
    reward_model: str = ""  # reward.model_path with a built-in name (minilm-imdb-sentiment) resolved to its directory


@dataclass
class OnlineResult:
    run_dir: Path
    final_model: Path
    rounds: list[dict] = field(default_factory=list)  # one summary row per round; row 0 is the starting policy
    resumed_from: int = 0  # the last finished round found on disk (0: a fresh start)
    restarts: list[dict] = field(default_factory=list)  # one per recovery from a lost actor or a hung call


def _as_messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def prepare_online_inputs(cfg: RunConfig) -> OnlineInputs:
    o, model_path = cfg.online, cfg.model.path
    prompts = load_prompts(o.prompt_files, cfg.data.on_error) if o.prompt_files else []
    eval_prompts = load_prompts(o.eval_prompt_files, cfg.data.on_error) if o.eval_prompt_files else []
    offline_files, default_reward = list(cfg.data.train_files), ""
    if model_path == "embedded":
        from ..tasks.embedded import ensure_embedded_task

        task = ensure_embedded_task(cfg.task, cfg.cache_dir)
        model_path, default_reward = str(task.model_dir), task.reward_fn
        prompts = prompts or [_as_messages(p) for p in task.train_prompts]
        eval_prompts = eval_prompts or [_as_messages(p) for p in task.eval_prompts]
        offline_files = offline_files or [str(task.train_file)]
    elif model_path in PRETRAINED:
        model_path = ensure_pretrained(model_path, cfg.cache_dir)
    if o.prompt_task == "imdb":
        from ..tasks.imdb import VADER_REWARD, imdb_prompts

        i = cfg.imdb
        task_prompts, task_eval = imdb_prompts(i.prompts, i.eval_prompts, i.min_words, i.max_words, i.seed)
        prompts, eval_prompts, default_reward = prompts or task_prompts, eval_prompts or task_eval, VADER_REWARD
    elif o.prompt_task:
        raise ValueError(f"online.prompt_task must be 'imdb' or empty, got {o.prompt_task!r}")
    if not prompts:
        raise ValueError(
            "online runs need prompts: online.prompt_files=[FILE], or model.path=embedded for the built-in task"
        )
    offline_pairs: list[TokenizedPair] = []
    if o.offline_ratio > 0:
        if not offline_files:
            raise ValueError("online.offline_ratio > 0 needs data.train_files to draw offline pairs from")
        offline_pairs, _ = load_pairs(
            offline_files, load_tokenizer(model_path, cfg.model.trust_remote_code), _settings(cfg), cfg.data.on_error
        )
    reward_model = cfg.reward.model_path
    if reward_model in PRETRAINED:
        reward_model = ensure_pretrained(reward_model, cfg.cache_dir)
    return OnlineInputs(
        model_path,
        cfg.model.reference_path or model_path,
        prompts,
        eval_prompts,
        offline_pairs,
        default_reward,
        reward_model,
    )


def _settings(cfg: RunConfig) -> TokenizeSettings:
    d = cfg.data
    return TokenizeSettings(d.chat_template, d.max_length, d.max_prompt_length, d.truncation_mode)


def sample_seed(base: int, round_index: int, prompt_index: int) -> int:
    """A per-(round, prompt) sampling seed: samples do not depend on how prompts are sharded over engines."""
    return (base * 1_000_003 + round_index * 100_003 + prompt_index) % (1 << 31)


class OnlineCampaign:
    def __init__(self, cfg: RunConfig, inputs: OnlineInputs | None = None):
        self.cfg = cfg
        o = cfg.online
        if o.rounds < 1 or o.samples_per_prompt < 2:
            raise ValueError(
                "online.rounds must be >= 1 and online.samples_per_prompt >= 2 "
                f"(got {o.rounds}, {o.samples_per_prompt})"
            )
        self.uses_reference = needs_reference(cfg.algo)
        self.inputs = inputs or prepare_online_inputs(cfg)
        self.run_dir = Path(cfg.output_dir).expanduser()
        self.spec = device_spec(cfg.cluster.gpus_per_rank, cfg.model.dtype)
        self.env = rank_env(self.spec, rank_threads(cfg.cluster.cpus_per_rank, cfg.cluster.torch_threads))
        self.tokenizer = load_tokenizer(self.inputs.model_path, cfg.model.trust_remote_code)
        self.accumulation = accumulation_steps(cfg)
        per_round = o.prompts_per_round or len(self.inputs.prompts)
        most_pairs = per_round * o.max_pairs_per_prompt * (1 + o.replay_ratio + o.offline_ratio)
        # An upper bound for the learning-rate schedule: a round never yields more pairs than this.
        self.total_steps = o.rounds * o.epochs_per_round * math.ceil(most_pairs / cfg.train.batch_size)
        self.rollout: RolloutGroup | None = None  # the live rollout group, while one runs
        self.round_checkpoints = CheckpointStore(self.run_dir / "round_checkpoints", cfg.train.keep_checkpoints)

    # --- the campaign --------------------------------------------------------------------------------------------
    def run(self) -> OnlineResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "config.json", json.dumps(asdict(self.cfg), indent=2))
        reference = self.uses_reference and not self.cfg.model.lora.enabled
        started = ensure_ray(self.cfg.cluster, group_needs(self.cfg, reference, online=True))
        restarts: list[dict] = []
        try:
            result = with_restarts(self._run, resume_mode(self.cfg.resume), self.cfg.train.max_restarts, restarts)
            result.restarts = restarts
            return result
        finally:
            if started:
                import ray

                ray.shutdown()

    def _run(self, resume: bool) -> OnlineResult:
        cfg, inputs = self.cfg, self.inputs
        state = self._finished_state() if resume else None
        result = OnlineResult(self.run_dir, self.run_dir / "final", resumed_from=state["round"] if state else 0)
        groups, began = [], time.perf_counter()
        try:
            rollout = self.rollout = RolloutGroup(cfg, inputs.model_path)
            groups.append(rollout)
            reward = RewardGroup(cfg, inputs.default_reward, inputs.reward_model)
            groups.append(reward)
            reference = ReferenceScorer(cfg, inputs.reference_path, self.spec, self.env)
            groups.append(reference)
            if self.uses_reference and not cfg.model.lora.enabled:
                reference.start()  # every round needs it: its replicas load while the policy starts
            policy = PolicyGroup(cfg, inputs.model_path, self.total_steps, self.accumulation, self.env)
            groups.append(policy)
            log.info("rollout, reward, reference and policy groups started in %.1fs", time.perf_counter() - began)
            writer = MetricsWriter(self.run_dir, append=state is not None)
            trainer = PolicyTrainer(
                cfg,
                policy,
                writer,
                self.accumulation,
                CheckpointStore(self.run_dir / "checkpoints", cfg.train.keep_checkpoints),
                self.total_steps,
                step=state["step"] if state else 0,
            )
            try:
                if state:
                    log.info("resuming after round %d (step %d) from %s", state["round"], state["step"], self.run_dir)
                    self.round_checkpoints.load(policy, state)
                    rollout.load_weights(policy.export_weights())
                    result.rounds = state["rows"]
                else:
                    result.rounds = [{"round": 0, **self._evaluate(rollout, reward, reference, policy)}]
                for r in range(result.resumed_from + 1, cfg.online.rounds + 1):
                    row = self._round(r, rollout, reward, policy, reference, trainer)
                    result.rounds.append(row)
                    checks = round_checks(result.rounds, cfg.monitor)
                    row.update(as_metrics(checks))
                    for warning in warnings(checks):
                        log.warning("round %d: monitor: %s", r, warning)
                    writer.write(trainer.step, {k: v for k, v in row.items() if isinstance(v, (int, float))})
                    self._finish_round(r, policy, trainer.step, result.rounds)
                policy.save_pretrained(str(result.final_model))
            finally:
                trainer.close()
                writer.close()
        finally:
            for group in reversed(groups):
                group.shutdown()
        return result

    # --- one round -----------------------------------------------------------------------------------------------
    def _round(
        self,
        r: int,
        rollout: RolloutGroup,
        reward: RewardGroup,
        policy: PolicyGroup,
        reference: ReferenceScorer,
        trainer: PolicyTrainer,
    ) -> dict:
        o = self.cfg.online
        seconds: dict[str, float] = {}
        began = time.perf_counter()
        clock = time.perf_counter()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[phase], clock = now - clock, now

        indices = self._round_prompts(r)
        prompts = [self.inputs.prompts[i] for i in indices]
        drawn = rollout.generate(
            prompts,
            [sample_seed(o.seed, r, i) for i in indices],
            o.samples_per_prompt,
            o.temperature,
            o.top_p,
            o.max_tokens,
        )
        samples = _texts(drawn)
        lap("generate")
        rewards = reward.score(prompts, samples)
        lap("score")
        pair_rows = build_pairs(
            prompts,
            [[self._response(prompt, s) for s in outs] for prompt, outs in zip(prompts, samples)],
            rewards,
            o.min_margin,
            o.max_pairs_per_prompt,
        )
        round_dir = self.round_dir(r)
        write_dir(
            round_dir / "samples",
            lambda d: _save_rows(
                d, [{"prompt": p, "responses": s, "rewards": w} for p, s, w in zip(prompts, samples, rewards)]
            ),
        )
        write_dir(round_dir / "pairs", lambda d: _save_rows(d, pair_rows))
        new_pairs = self._tokenized(round_dir / "pairs")
        train_pairs = new_pairs + self._mixed_in(r, len(new_pairs))
        lap("pairs")
        ref = None
        if self.uses_reference and train_pairs:
            ref, _ = reference.logps(train_pairs, self._adapter_base(policy))
        lap("reference")
        steps_before = trainer.step
        if train_pairs:
            trainer.train(train_pairs, ref, o.epochs_per_round, self.cfg.data.shuffle_seed + 1000 * r)
        else:
            log.warning("round %d: no pairs (every prompt's samples tied); the policy is unchanged", r)
        lap("train")
        if train_pairs:
            rollout.load_weights(policy.export_weights())
        lap("sync")
        evaluation = self._evaluate(rollout, reward, reference, policy) if self._evaluates(r) else {}
        lap("eval")
        new_ref = None if ref is None else (ref[0][: len(new_pairs)], ref[1][: len(new_pairs)])
        row = {
            "round": r,
            "prompts": len(prompts),
            **_sample_statistics(drawn, rewards, o.min_margin),
            "pairs": len(new_pairs),
            "train_pairs": len(train_pairs),
            "steps": trainer.step - steps_before,
            **pair_statistics(new_pairs, self.cfg.monitor.near_identical_ratio, new_ref),
            **{f"train/{k}": trainer.last_metrics[k] for k in TRAIN_KEYS if k in trainer.last_metrics},
            **evaluation,
        }
        row.update({f"time/{k}": seconds[k] for k in PHASES})
        row["time/round"] = time.perf_counter() - began
        log.info("round %d: %s", r, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
        return row

    def _round_prompts(self, r: int) -> list[int]:
        n, pool = self.cfg.online.prompts_per_round, len(self.inputs.prompts)
        if not n or n >= pool:
            return list(range(pool))
        return sorted(random.Random(self.cfg.online.seed + r).sample(range(pool), n))

    @staticmethod
    def _response(prompt: Text, text: str):
        """A sampled text in the prompt's format: an assistant message for conversations."""
        return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text

    def _tokenized(self, source: Path) -> list[TokenizedPair]:
        if (source / EMPTY).exists():
            return []
        pairs, report = load_pairs([str(source)], self.tokenizer, _settings(self.cfg), self.cfg.data.on_error)
        log.info("%s: %s", source, report.summary())
        return pairs

    def _mixed_in(self, r: int, n_new: int) -> list[TokenizedPair]:
        """Earlier rounds' pairs (replay_ratio per new pair) and offline pairs (offline_ratio per new pair)."""
        o, rng = self.cfg.online, random.Random(self.cfg.online.seed * 7 + r)
        extra: list[TokenizedPair] = []
        if o.replay_ratio > 0 and r > 1:
            earlier = [p for k in range(1, r) for p in self._tokenized(self.round_dir(k) / "pairs")]
            extra += rng.sample(earlier, min(len(earlier), round(o.replay_ratio * n_new)))
        if o.offline_ratio > 0:
            pool = self.inputs.offline_pairs
            extra += rng.sample(pool, min(len(pool), round(o.offline_ratio * n_new)))
        return extra

    def _evaluates(self, r: int) -> bool:
        o = self.cfg.online
        return r % max(1, o.eval_every) == 0 or r == o.rounds

    def _adapter_base(self, policy: PolicyGroup) -> PolicyGroup | None:
        """The policy group when the reference is its base model with the LoRA adapter disabled."""
        return policy if self.cfg.model.lora.enabled else None

    def _evaluate(
        self, rollout: RolloutGroup, reward: RewardGroup, reference: ReferenceScorer, policy: PolicyGroup
    ) -> dict[str, float]:
        """On the held-out prompts (same seeds every round): mean reward sampled as in training and greedy, mean sampled
        length, and the KL to the reference on the sampled responses."""
        o, prompts = self.cfg.online, self.inputs.eval_prompts
        if not prompts:
            return {}
        seeds = [sample_seed(o.seed, 0, i) for i in range(len(prompts))]
        sampled = rollout.generate(
            prompts,
            seeds,
            o.eval_samples_per_prompt,
            o.temperature,
            o.top_p,
            o.max_tokens,
            with_logp=self.uses_reference,
        )
        greedy = rollout.generate(prompts, seeds, 1, 0.0, 1.0, o.max_tokens)
        mean = lambda scores: sum(x for row in scores for x in row) / sum(len(row) for row in scores)
        metrics = {
            "eval/sampled_reward": mean(reward.score(prompts, _texts(sampled))),
            "eval/greedy_reward": mean(reward.score(prompts, _texts(greedy))),
            "eval/length": _mean_length(sampled),
        }
        if self.uses_reference:
            metrics["eval/kl"] = self._kl(prompts, sampled, reference, policy)
        return metrics

    def _kl(
        self, prompts: list[Text], sampled: list[list[Sample]], reference: ReferenceScorer, policy: PolicyGroup
    ) -> float:
        """Monte-Carlo KL(policy || reference) in nats per response: the mean of log pi(y) - log ref(y) over responses
        y drawn from the policy (exact at temperature 1, top-p 1). Two samples of a prompt share one reference pair."""
        pairs, scored = [], []  # scored[i]: the samples whose log-probs pairs[i]'s chosen and rejected slots hold
        for prompt, outs in zip(prompts, sampled):
            prompt_ids = tuple(encode_prompt(self.tokenizer, prompt, isinstance(prompt, list)))
            kept = [s for s in outs if s.token_ids]
            for k in range(0, len(kept), 2):
                two = kept[k : k + 2]
                pairs.append(TokenizedPair(prompt_ids, two[0].token_ids, two[-1].token_ids))
                scored.append(two)
        if not pairs:
            return float("nan")
        (chosen, rejected), _ = reference.logps(pairs, self._adapter_base(policy))
        gaps = [sample.logp - ref for two, c, r in zip(scored, chosen, rejected) for sample, ref in zip(two, (c, r))]
        return sum(gaps) / len(gaps)

    # --- persistence ---------------------------------------------------------------------------------------------
    def round_dir(self, r: int) -> Path:
        return self.run_dir / "rounds" / f"round_{r:03d}"

    def _finish_round(self, r: int, policy: PolicyGroup, step: int, rows: list[dict]) -> None:
        """The summary, then the round's checkpoint (its state names the round): a crash before it leaves round r
        unfinished."""
        write_text(self.run_dir / "rounds.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        self.round_checkpoints.save(policy, f"round_{r}", {"round": r, "step": step, "rows": rows})

    def _finished_state(self) -> dict | None:
        state = self.round_checkpoints.latest()
        if state and state["round"] >= self.cfg.online.rounds:
            log.info("%s: all %d rounds already finished; running none", self.run_dir, self.cfg.online.rounds)
        return state


def _texts(samples: list[list[Sample]]) -> list[list[str]]:
    return [[s.text for s in outs] for outs in samples]


def _mean_length(samples: list[list[Sample]]) -> float:
    """Mean response length in tokens."""
    lengths = [len(s.token_ids) for outs in samples for s in outs]
    return sum(lengths) / max(1, len(lengths))


def _sample_statistics(drawn: list[list[Sample]], rewards: list[list[float]], min_margin: float) -> dict[str, float]:
    """A round's samples: their rewards, length, empty share, and the share of prompts that yield no pair (fewer than
    two non-empty samples, or all of them within min_margin: build_pairs pairs none of those)."""
    flat = [score for scores in rewards for score in scores]
    pairable = [[w for s, w in zip(outs, scores) if not is_empty(s.text)] for outs, scores in zip(drawn, rewards)]
    tied = sum(len(p) < 2 or max(p) - min(p) <= min_margin for p in pairable)
    return {
        "reward/mean": sum(flat) / len(flat),
        "reward/max": max(flat),
        "length/sampled": _mean_length(drawn),
        "samples/empty_share": 1 - sum(map(len, pairable)) / len(flat),
        "pairs/tied_prompt_share": tied / len(pairable),
    }


def _save_rows(directory: Path, rows: list[dict]) -> None:
    """A datasets directory; no rows leave the directory with only a note (datasets cannot reload an empty save)."""
    import datasets

    if not rows:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / EMPTY).write_text("this round produced no rows\n")
        return
    datasets.disable_progress_bars()
    datasets.Dataset.from_list(rows).save_to_disk(str(directory))
