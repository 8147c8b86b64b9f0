"""FlagEmbedding's official M3 fine-tuning entry point with a step timer: run by ``vs_flagembedding.py`` inside the
virtualenv that holds ``flagembedding==1.4.2`` (it imports nothing of m3lit).

    python flagembedding_driver.py RESULT.json --warmup 3 -- <FlagEmbedding.finetune.embedder.encoder_only.m3 arguments>

It does what ``python -m FlagEmbedding.finetune.embedder.encoder_only.m3`` does (parse the three argument
dataclasses, build ``EncoderOnlyEmbedderM3Runner``, ``run()``), and adds two observers that change nothing of the
training: the data collator is wrapped to count the real (attention-mask) and computed (padded) tokens of every
batch, and a ``TrainerCallback`` records the wall clock at the end of every optimizer step, so that a step's time is
data + forward + backward + update. RESULT.json gets the per-step times and token counts after ``--warmup`` steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types


def stub_missing_mask_utils() -> None:
    """FlagEmbedding 1.4.2 imports ``transformers.modeling_attn_mask_utils``, which transformers 5 removed; the
    names it takes from there are used only by its rerankers."""
    try:
        import transformers.modeling_attn_mask_utils  # noqa: F401
    except ImportError:
        stub = types.ModuleType("transformers.modeling_attn_mask_utils")
        stub.__getattr__ = lambda attr: type(attr, (), {})  # any name imports as a placeholder class
        sys.modules["transformers.modeling_attn_mask_utils"] = stub


def count_tokens(inputs) -> tuple[int, int]:
    """(real, computed) tokens of a collated side: one BatchEncoding or a list of sub-batches."""
    parts = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    real = sum(int(p["attention_mask"].sum()) for p in parts)
    computed = sum(int(p["attention_mask"].numel()) for p in parts)
    return real, computed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    flag_args = argv[split + 1:]

    import torch

    torch.set_num_threads(args.threads)
    stub_missing_mask_utils()
    from FlagEmbedding.finetune.embedder.encoder_only.m3 import (
        EncoderOnlyEmbedderM3DataArguments,
        EncoderOnlyEmbedderM3ModelArguments,
        EncoderOnlyEmbedderM3Runner,
        EncoderOnlyEmbedderM3TrainingArguments,
    )
    from transformers import HfArgumentParser, TrainerCallback

    hf_parser = HfArgumentParser((EncoderOnlyEmbedderM3ModelArguments, EncoderOnlyEmbedderM3DataArguments,
                                  EncoderOnlyEmbedderM3TrainingArguments))
    model_args, data_args, training_args = hf_parser.parse_args_into_dataclasses(args=flag_args)
    runner = EncoderOnlyEmbedderM3Runner(model_args=model_args, data_args=data_args, training_args=training_args)

    batches: list[tuple[int, int]] = []
    collate = runner.trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        q_real, q_all = count_tokens(batch["queries"])
        p_real, p_all = count_tokens(batch["passages"])
        batches.append((q_real + p_real, q_all + p_all))
        return batch

    runner.trainer.data_collator = counting_collator
    step_ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            step_ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            step_ends.append(time.perf_counter())

    runner.trainer.add_callback(StepTimer())
    runner.run()

    steps = len(step_ends) - 1
    times = [step_ends[i + 1] - step_ends[i] for i in range(steps)]
    timed = slice(args.warmup, steps)
    result = {"step_s": times[timed], "real_tokens": [r for r, _ in batches[:steps]][timed],
              "computed_tokens": [c for _, c in batches[:steps]][timed], "steps": steps,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    with open(args.result, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
