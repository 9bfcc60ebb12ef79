"""The command line: options composed from the presets, every bad value refused before anything starts (no Ray, no
torch), unknown keys refused, inputs checked before Ray, and --help showing the values a run will use."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from dpo_ray.compose import compose, presets
from dpo_ray.options import Bounds, Choice, options, value_at
from dpo_ray.schema import RunConfig
from dpo_ray.validation import ConfigError


def test_the_embedded_task_brings_its_recipe_and_overrides_win_over_it():
    cfg = compose(["algo.beta=0.2", "cluster.policy_ranks=3", "data.train_files=[a.jsonl,b.jsonl]"])
    assert isinstance(cfg, RunConfig) and cfg.model.path == "embedded"
    assert cfg.algo.rpo_alpha == 1.0 and cfg.train.lr == 3e-4 and cfg.train.epochs == 3  # the recipe
    assert cfg.algo.beta == 0.2 and cfg.cluster.policy_ranks == 3 and cfg.data.train_files == ["a.jsonl", "b.jsonl"]
    assert compose(["algo=dpo"]).algo.rpo_alpha == 0.0  # a preset given on the command line wins over the recipe
    online = compose(["online.rounds=3", "online.samples_per_prompt=8"], "online")
    assert online.online.rounds == 3 and online.online.samples_per_prompt == 8 and online.output_dir == "runs/online"
    assert online.train.lr_scheduler == "constant" and online.train.warmup_steps == 2


def test_a_model_of_your_own_gets_the_schema_defaults_that_help_prints(capsys):
    cfg, schema = compose(["model.path=/models/mine"]), RunConfig()
    different = [o.name for o in options(RunConfig) if value_at(cfg, o.name) != value_at(schema, o.name)]
    assert different == ["model.path"]
    for command in ("train", "online"):
        assert compose(["model.path=/models/mine"], command).train.lr == 5e-7
    from dpo_ray.cli import main

    assert main(["train", "model.path=/models/mine", "--help"]) == 0
    text = capsys.readouterr().out
    annotated = [line.split()[0] for line in text.splitlines() if line.startswith("  ") and "(default " in line]
    assert "  train.lr=5e-07 " in text and annotated == ["model.path='/models/mine'"]
    assert main(["train", "--help"]) == 0  # the embedded task: its recipe's values, each with the schema default
    lr_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  train.lr="))
    assert lr_line.startswith("  train.lr=0.0003 ") and lr_line.endswith("(default 5e-07)")


def test_help_lists_every_option_once_with_its_help_and_every_preset(capsys):
    from dpo_ray.cli import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("  ") and "=" in line.split()[0]]
    names = [line.split()[0].split("=", 1)[0] for line in lines]
    assert names == [o.name for o in options(RunConfig)]
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # name=default, then its help
    assert "cluster.placement='PACK'" in text and "[one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD]" in text
    assert "algo.beta=0.1" in text and "[> 0]" in text
    for group, names in presets().items():
        assert f"  {group}: {', '.join(names)}" in text


def test_every_preset_composes_and_validates():
    for group, names in presets().items():
        for name in names:
            override = f"+{group}={name}" if group == "experiment" else f"{group}={name}"
            for command in ("train", "online"):
                assert isinstance(compose([override], command), RunConfig)


def bad_value(option) -> str | None:
    """A value just outside what the option allows (None for options that take anything of their type)."""
    if isinstance(option.type, type) and issubclass(option.type, Choice):
        return "not_a_choice"
    bounds: Bounds | None = option.bounds
    if bounds is None:
        return None
    value = (bounds.low if bounds.low_open else bounds.low - 1) if bounds.low is not None else bounds.high + 1
    return str(int(value) if option.type is int or "int" in str(option.type) else value)


def run_in_fresh_process(tmp_path, argvs: list[list[str]]) -> tuple[list, list[str], Path]:
    """main(argv) for each argv in one new Python process with its own RAY_TMPDIR and working directory: each call's
    exit status, stderr and whether Ray was initialised after it; the heavy modules the process imported; its working
    directory. Asserts no Ray session dir."""
    script = (
        "import io, json, sys, contextlib\n"
        "from dpo_ray.cli import main\n"
        "out = []\n"
        f"for argv in {argvs!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = main(argv)\n"
        "    started = 'ray' in sys.modules and sys.modules['ray'].is_initialized()\n"
        "    out.append((rc, err.getvalue(), started))\n"
        "loaded = [m for m in ('ray', 'torch', 'vllm', 'deepspeed') if m in sys.modules]\n"
        "print(json.dumps([out, loaded]))\n"
    )
    ray_dir = tmp_path / "ray"
    ray_dir.mkdir()
    env = {"RAY_TMPDIR": str(ray_dir), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    cwd = tmp_path / "cwd"  # where the default output_dir would be made
    cwd.mkdir()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(ray_dir.iterdir())  # no Ray session was ever created
    results, loaded = json.loads(done.stdout.splitlines()[-1])
    return results, loaded, cwd


def test_every_bad_value_fails_naming_the_option_and_what_it_allows_without_starting_anything(tmp_path):
    """In a fresh process: each bad value exits 2 with a message naming the option and its allowed values, and the
    process never imported Ray or torch, nor did a Ray session directory appear."""
    cases = [(o.name, bad_value(o)) for o in options(RunConfig) if bad_value(o) is not None]
    assert len(cases) > 80
    results, loaded, _ = run_in_fresh_process(tmp_path, [["train", f"{name}={value}"] for name, value in cases])
    assert loaded == []
    by_name = {o.name: o for o in options(RunConfig)}
    for (name, _), (rc, message, started) in zip(cases, results):
        option = by_name[name]
        assert rc == 2 and not started and message.startswith("dpo-ray train: ") and name in message, (name, message)
        if isinstance(option.type, type) and issubclass(option.type, Choice):
            assert all(m.value in message for m in option.type), message
        else:
            assert str(option.bounds) in message, message


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["cluster.gpus_per_rank=0.5"], "cluster.gpus_per_rank=0.5: must be 0 or a whole number"),
        (["model.attn_implementation=flash_attention_2"], "needs GPUs"),
        (["rollout.tensor_parallel_size=2", "rollout.engine_process=inline"], "runs its workers in processes"),
        (["model.lora.enabled=true", "model.lora.r=600"], "vLLM serves LoRA adapters up to rank 512"),
        (["train.warmup_steps=2.5"], "a number of steps must be whole"),
        (["train.adam_betas=[0.9]"], "train.adam_betas=[0.9]: must be two numbers in [0, 1)"),
        (["embedded.eval_numbers=1000"], "must be below embedded.numbers=1000"),
        (["imdb.min_words=9"], "imdb.min_words=9: must be <= imdb.max_words=8"),
        (["online.prompt_task=imbd"], "online.prompt_task='imbd': must be empty or one of imdb; did you mean imdb?"),
        (["algo.loss_type=sigmod"], "unknown loss 'sigmod'; did you mean sigmoid?"),
        (["algo.loss_type='sigmoid,sft'", "algo.loss_weights=[1.0]"], "1 weight(s) for 2 loss type(s)"),
        (["algo.label_smoothing=0.1"], "for conservative DPO on sigmoid set algo.cdpo_label_smoothing"),
        (["algo.loss_type=hinge", "algo.label_smoothing=0.1"], "not by 'hinge'"),
        (["algo.loss_type=exo_pair"], "exo_pair needs it in (0, 1) (the EXO paper uses 1e-3)"),
        (["algo.loss_type=robust", "algo.label_smoothing=0.5"], "robust needs it in [0, 0.5)"),
        (["algo.loss_type=hinge", "algo.cdpo_label_smoothing=0.1"], "read by sigmoid only"),
        (["algo.loss_type=nca_pair", "algo.f_divergence_type=js_divergence"], "chosen-rejected difference (sigmoid,"),
        (["algo.f_alpha_divergence_coef=0.3"], "read by f_divergence_type=alpha_divergence only, not reverse_kl"),
        (["train.lr_scheduler=cosine_with_min_lr"], "needs train.lr_scheduler_kwargs with min_lr or min_lr_rate"),
        (["algo.loss_type=aot", "algo.use_weighting=true"], "not with aot, which sort the pairs"),
        (["data.columns={question:query}"], "'question' maps onto 'query'; the targets are prompt, chosen, rejected"),
        (["algo.loss_type=[kto,sft]"], "kto trains on labelled completions, not pairs; it takes no other loss"),
        (["algo=kto", "algo.rpo_alpha=0.5"], "algo.rpo_alpha=0.5: not with kto (a pair option)"),
        (["algo.desirable_weight=2.0"], "algo.desirable_weight=2.0: read by kto, apo_zero_unpaired only"),
        (["online.desirable_threshold=0.5"], "labels samples for an unpaired loss (algo.loss_type=kto or"),
        (["online.prompt_order=fresh"], "online.prompt_order=fresh: read with online.prompts_per_round > 0 only"),
        (["cluster.min_policy_ranks=2"], "cluster.min_policy_ranks=2: must be below cluster.policy_ranks=2"),
        (["cluster.sequence_parallel_size=3"], "sequence_parallel_size=3: must divide cluster.policy_ranks=2"),
        (
            ["cluster.sequence_parallel_size=2", "model.attn_implementation=eager"],
            "cluster.sequence_parallel_size=2: needs model.attn_implementation=sdpa or flash_attention_*",
        ),
        (["output_dir=hdfs://x/run"], "output_dir=hdfs://x/run: a URI must be s3://bucket/path or gs://bucket/path"),
        (["algo=simpo", "online.reference_update=each_round"], "is reference-free; there is no reference to update"),
        (["algo.sync_ref_model=true", "online.reference_update=each_round"], "moves the reference too; choose one"),
        (
            ["online.reference_update=each_round", "deepspeed.zero_stage=3", "deepspeed.offload_param=nvme"],
            "deepspeed.offload_param=nvme swaps the partitions it copies",
        ),
        (["monitor.kl_to=round_reference"], "read with online.reference_update=each_round only"),
        (["algo.ref_model_sync_steps=8"], "algo.ref_model_sync_steps=8: read by algo.sync_ref_model=true only"),
        (["algo=simpo", "algo.sync_ref_model=true"], "is reference-free; nothing to sync"),
        (["algo.sync_ref_model=true", "model.lora.enabled=true"], "the policy's base with the adapter"),
        (["algo.sync_ref_model=true", "algo.ref_model_mixup_alpha=1.5"], "algo.ref_model_mixup_alpha=1.5: must be"),
        (
            ["model.lora.enabled=true", "model.lora.modules_to_save=[lm_head]", "deepspeed.zero_stage=3"],
            "peft copies those modules after ZeRO-3 has partitioned them",
        ),
        (
            ["model.lora.enabled=true", "model.lora.modules_to_save=[lm_head]", "deepspeed.offload_param=cpu"],
            "deepspeed.zero_stage=auto: no ZeRO stage suits these options",
        ),
        (
            ["model.lora.enabled=true", "model.lora.use_dora=true", "rollout.lora_sync=adapter"],
            "vLLM cannot serve an adapter with model.lora.use_dora=true",
        ),
        (["train.lr_scheduler_kwargs={power: 2}"], "read by transformers' schedulers only, not cosine"),
        (["algo.simpo_gamma=1.0"], "algo.simpo_gamma=1.0: read by simpo only"),
        (["algo=simpo", "model.reference_path=/models/ref"], "is reference-free, so no reference is loaded"),
        (["model.lora.enabled=true", "model.reference_path=/models/ref"], "cannot be another model"),
        (["+algo.betta=0.1"], "algo.betta: unknown option; did you mean algo.beta?"),
        (["algo.betta=0.1"], "algo.betta: unknown option; did you mean algo.beta?"),
        (["+report_too=wandb"], "report_too: unknown option; did you mean report_to?"),
        (["algo=dpoo"], "algo=dpoo: no such preset; did you mean dpo?"),
        (["cluster.policy_ranks=two"], "cluster.policy_ranks: Value 'two' of type 'str' could not be converted"),
        (["deepspeed.zero_stage=0", "model.dtype=bfloat16"], "deepspeed.zero_stage=0: model.dtype bfloat16: DeepSpeed"),
        (["deepspeed.zero_stage=2", "deepspeed.offload_param=cpu"], "which only stage 3 does"),
        (["deepspeed.zero_stage=0", "deepspeed.offload_optimizer=cpu"], "partitioned optimizer states (stage >= 1)"),
        (["deepspeed.zero_stage=4"], "deepspeed.zero_stage"),
        (["reward.judge_model=smollm2-135m", "reward.judge_fn=m:f"], "not with reward.judge_fn='m:f'; one judge"),
        (["reward.judge_fn=m:f", "reward.fn=m:g"], "reward.judge_fn='m:f': not with reward.fn='m:g'; a judge replaces"),
        (["reward.judge_model=j", "reward.model_path=r"], "not with reward.model_path='r'"),
        (["reward.judge_fn=m:f", "reward.judge_template='{prompt} {response_a}'"], "holds no {response_b}"),
        (["reward.judge_template='{prompt}{response_a}{response_b}'"], "read by reward.judge_model or"),
        (["eval.judge_model=j", "eval.judge_fn=m:f"], "eval.judge_model='j': not with eval.judge_fn='m:f'; one"),
        (["eval.reference_answers=/a.jsonl"], "read by eval.judge_model or eval.judge_fn only"),
    ],
)
def test_rules_between_options_and_unknown_keys_fail_when_composed(overrides, expected):
    with pytest.raises(ConfigError) as error:
        compose(overrides)
    assert expected in str(error.value)


def test_zero_stage_is_given_as_a_number_or_auto():
    assert [str(compose([f"deepspeed.zero_stage={v}"]).deepspeed.zero_stage) for v in (0, 1, 2, 3, "auto")] == [
        "0",
        "1",
        "2",
        "3",
        "auto",
    ]
    assert str(compose([]).deepspeed.zero_stage) == "auto"


def test_several_losses_are_given_as_trls_list_or_joined_by_commas():
    from dpo_ray.losses.registry import loss_terms

    listed = compose(["algo.loss_type=[sigmoid,sft]", "algo.loss_weights=[1.0,0.5]"]).algo
    joined = compose(["algo.loss_type='sigmoid,sft'", "algo.loss_weights=[1.0,0.5]"]).algo
    assert listed.loss_type == joined.loss_type == "sigmoid,sft"
    assert loss_terms(listed.loss_type, listed.loss_weights) == [("sigmoid", 1.0), ("sft", 0.5)]
    with pytest.raises(ConfigError, match="unknown loss 'sfft'; did you mean sft"):
        compose(["algo.loss_type=[sigmoid,sfft]"])


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as error:
        compose(["algo.beta=0", "cluster.policy_ranks=0", "online.top_p=2"])
    assert str(error.value).splitlines() == [
        "algo.beta=0.0: must be > 0",
        "cluster.policy_ranks=0: must be >= 1",
        "online.top_p=2.0: must be in (0, 1]",
    ]


def test_missing_and_unusable_inputs_fail_before_ray_starts(tmp_path, tiny_model_dir):
    """A missing model, a model with pickled weights only, a directory that is no model, a cut or garbled weights
    file, a model without tokenizer files, a missing data file, data without one usable pair, an unimportable reward,
    message prompts for a model without a chat template, a judge model without one: each one line, exit status 2,
    and no Ray session was ever created."""
    import shutil

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(f"{tiny_model_dir}/config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    (tmp_path / "empty").mkdir()
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    untemplated = tmp_path / "untemplated"
    shutil.copytree(tiny_model_dir, untemplated)
    (untemplated / "chat_template.jinja").unlink()
    cut, garbled, untokenized = (tmp_path / name for name in ("cut", "garbled", "untokenized"))
    for copy in (cut, garbled, untokenized):
        shutil.copytree(tiny_model_dir, copy)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (garbled / "model.safetensors").write_bytes(b"\xff" * 8 + (garbled / "model.safetensors").read_bytes()[8:])
    (untokenized / "tokenizer.json").unlink()
    no_preference = tmp_path / "same.jsonl"
    no_preference.write_text('{"prompt": "p", "chosen": "a", "rejected": "a"}\n')
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"prompt": "p", "response": "r"}\n')
    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"prompt": [{"role": "user", "content": "Write 5 in words."}]}\n')
    own_prompts = [
        "online",
        f"model.path={tiny_model_dir}",
        f"online.prompt_files=[{chats}]",
        f"online.eval_prompt_files=[{chats}]",
        "reward.fn=math:sqrt",
    ]
    cases = [
        (["train", "model.path=/no/such/model"], "model.path='/no/such/model': no such directory"),
        (["train", f"model.path={pickled}", f"data.train_files=[{data}]"], "pytorch_model.bin, a pickle"),
        (["train", f"model.path={tmp_path / 'empty'}"], "no config.json"),
        (["train", f"model.path={cut}"], f"{weights}: its tensors need"),
        (["train", f"model.path={garbled}"], "model.safetensors: its header claims 18446744073709551615 bytes"),
        (["train", f"model.path={untokenized}"], f"model.path='{untokenized}': no tokenizer files"),
        (
            [
                "train",
                f"model.path={tiny_model_dir}",
                f"data.train_files=[{no_preference}]",
                "progress=false",
                f"output_dir={tmp_path}/r",
            ],
            f"no usable preference pairs in {no_preference}: 1 rows -> 0 pairs; dropped: 1 chosen == rejected",
        ),
        (["train", f"model.path={tiny_model_dir}"], "data.train_files is empty"),
        (["train", f"model.path={tiny_model_dir}", "data.train_files=[/no/a.jsonl]"], "/no/a.jsonl: no such file"),
        (["online", "reward.fn=no_such_module:score"], "reward.fn='no_such_module:score': cannot import it"),
        (["online", f"model.path={tiny_model_dir}", "reward.fn=math:sqrt"], "online runs need prompts"),
        (["online", "reward.judge_fn=no_such_module:judge"], "reward.judge_fn='no_such_module:judge': cannot import"),
        (["online", "reward.judge_model=/no/judge"], "reward.judge_model='/no/judge': no such directory"),
        (["online", "eval.judge_fn=no_such_module:judge"], "eval.judge_fn='no_such_module:judge': cannot import"),
        (["online", "eval.judge_model=/no/judge"], "eval.judge_model='/no/judge': no such directory"),
        (
            [*own_prompts, "eval.judge_fn=math:hypot", f"eval.reference_answers={data}"],
            f"eval.reference_answers: {data}: row 0: field 'response': missing",
        ),
        (
            [*own_prompts, "eval.judge_fn=math:hypot", f"eval.reference_answers={answers}"],
            f"eval.reference_answers: {answers}: no answer to 1 of the 1 held-out prompts: 'Write 5 in words.'",
        ),
        (
            ["online", f"model.path={untemplated}", f"online.prompt_files=[{chats}]", "reward.fn=math:sqrt"],
            f"the tokenizer of {untemplated} has no chat template",
        ),
        (
            [
                "online",
                f"model.path={tiny_model_dir}",
                f"online.prompt_files=[{chats}]",
                f"reward.judge_model={untemplated}",
            ],
            f"the tokenizer of {untemplated} has no chat template; the judge",
        ),
    ]
    results, _, cwd = run_in_fresh_process(tmp_path, [argv for argv, _ in cases])
    assert not (cwd / "runs" / "latest").exists()  # the train cases stop before their output_dir is made
    for (argv, expected), (rc, message, started) in zip(cases, results):
        assert rc == 2 and expected in message and not started, (argv, message)
        assert len(message.strip().splitlines()) == 1, message


def test_cfg_prints_the_composed_config_as_yaml_that_hydra_reads_back(capsys):
    import yaml

    from dpo_ray.cli import main

    assert main(["online", "algo.beta=0.3", "--cfg"]) == 0
    composed = yaml.safe_load(capsys.readouterr().out)
    assert composed["algo"]["beta"] == 0.3 and composed["data"]["layout"] == "prefix_shared"
    assert [f.name for f in fields(RunConfig)] == list(composed)


def test_submit_refuses_a_bad_option_before_contacting_the_cluster(capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # else submit sets token mode for the tests after it
    from dpo_ray.cli import main

    # nothing listens on port 9: a submit that got as far as the job server would fail differently
    assert main(["submit", "--address", "http://127.0.0.1:9", "train", "train.optimizer=adamww"]) == 2
    assert (
        "dpo-ray submit: train.optimizer: Invalid value 'adamww', expected one of [adamw, sgd]"
        in capsys.readouterr().err
    )
