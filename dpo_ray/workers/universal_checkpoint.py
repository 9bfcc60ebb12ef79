"""A DeepSpeed checkpoint written by N data-parallel ranks, loaded by M: ZeRO stages 1-3 partition the optimizer
states (and at stage 3 the weights) by rank, so such a checkpoint is first converted into DeepSpeed's universal layout
(one folder a parameter, holding its fp32 weights and Adam moments whole), which any number of ranks loads. Stage 0
keeps the whole state in one file that every rank reads, so it needs no conversion."""

from __future__ import annotations

import contextlib
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path


def convert(checkpoint_dir: str, tag: str, out_dir: str) -> None:
    """checkpoint_dir/tag, converted into out_dir/tag (one process: it reads every rank's shards)."""
    from deepspeed.checkpoint.ds_to_universal import main

    main(
        Namespace(
            input_folder=str(Path(checkpoint_dir) / tag),
            output_folder=str(Path(out_dir) / tag),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # Hugging Face modules carry no universal_checkpoint_info of their own
        )
    )


@contextlib.contextmanager
def loading_universal(engine) -> Iterator[None]:
    """engine.load_checkpoint reads the universal layout while inside. DeepSpeed reads this flag of its config only
    when it loads, so the engine need not be built again (later saves are ordinary checkpoints)."""
    config = engine._config
    before, config.load_universal_checkpoint = config.load_universal_checkpoint, True
    try:
        yield
    finally:
        config.load_universal_checkpoint = before
