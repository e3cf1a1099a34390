"""Training throughput and peak memory: this project's train step against TRL's DPOTrainer, side by side.

    .venv/bin/python benchmarks/train_vs_trl.py [--steps 16 --reps 3 --warmup 2 --sides adpo,trl-live,...] [--quick]
    .venv/bin/python benchmarks/train_vs_trl.py --preset real [--vocab 262144] [--steps 3 --warmup 1 --reps 3]

Sides (each run in its own fresh subprocess; the parent interleaves them, rotating the order every repetition):
  adpo            this project: what the train stage builds (adpo.training.loop.setup_training: reference log-probs
                  cached first, time reported apart; the DeepSpeed engine), then its train step; the policy's
                  log-probs in chunks of train.logps_chunk_size=256 response positions (adpo.logprobs), as configured
  adpo-gc         adpo with train.gradient_checkpointing=true
  adpo-whole      adpo with train.logps_chunk_size=null: the plain path, the logits of all response positions at once
  adpo-whole-gc   adpo-whole with train.gradient_checkpointing=true
  trl-live        TRL DPOTrainer defaults: live reference model, gradient checkpointing on (DPOConfig's default)
  trl-precompute  TRL DPOTrainer with precompute_ref_log_probs=True (time to precompute reported apart)
  trl-*-nogc      the same with gradient_checkpointing=False
  *-accum         the same pairs per optimizer step as micro-batches of 1 pair (gradient accumulation 8 by default),
                  on both sides with their other defaults: the usual way to trade speed for activation memory
Every side but *-accum trains on micro-batches of --micro-batch pairs, --pairs-per-step pairs per optimizer step
(accumulation = their quotient), the same on both sides.

Workloads. The default (kept from the first version of this benchmark, and what GOALS are about): a random 4-layer,
256-wide Llama, word-level vocabulary of 503, prompts ~48 tokens, responses 100-160, 8 pairs per step, micro-batch 8.
`--preset real` (issue 13: the logits at real vocabulary sizes): vocabulary 128,256 (Llama 3's; `--vocab 262144` for
Gemma 3's), a 2-layer, 64-wide Llama (4 heads; tied embeddings, so the [vocab, 64] LM head is nearly all the
weights), prompts of 44-52 words + BOS, responses of 380-420 words + EOS (~470 tokens a row), micro-batches of 2 pairs,
2 pairs per optimizer step (no accumulation: the same per-pair work as 8 pairs in 4 micro-batches, at a quarter of the
time per step on a 2-core CPU), sides adpo-gc, adpo-whole-gc, trl-live, trl-precompute (checkpointing on
everywhere: TRL's default; at this width it changes little), and REAL_GOALS. Every option of the preset can be
overridden (--vocab, --hidden, --layers, --heads, --prompt-words, --response-words, --micro-batch, --pairs-per-step,
--sides); any workload other than the default is judged by REAL_GOALS. The word-level tokenizer holds the whole
vocabulary and the sentences draw words uniformly from all of it, so the model's embeddings and LM head are
[vocab, hidden] and every logit column is live.

TRL's memory options, as of TRL 1.16 on CPU: precompute_ref_log_probs runs (side trl-precompute). padding_free does
not: since TRL's DPO refactor, DPOTrainer warns and falls back to padding (the check records trainer.padding_free
after asking for it), and before that it needed FlashAttention 2/3 anyway. activation_offloading moves accelerator
activations to host memory: on CPU there is nothing to move, and it needs torch.accelerator (None here).
use_liger_kernel is deprecated and needs Triton. Note that TRL 1.16 already computes its log-probs through a fused
LM head (trl.trainer.utils.add_fused_lm_head: tiles of 4096 positions x 32,768 vocabulary columns, logits
recomputed in backward): it never holds the [batch, length, vocab] logits either, but on CPU it scores every position
(prompt and padding too, as Triton's compact path is GPU-only) and computes entropy, mean logit and top-1 besides.

Both sides: the same pairs in the same order (the train stage's data schedule; TRL is fed the pairs in that order),
the same pairs per optimizer step and micro-batch, fp32 on CPU, torch.set_num_threads(2). Before timing, a `check`
subprocess verifies that both tokenise every pair identically and that the first training step computes the same DPO
loss (sigmoid, same beta) and rewards on the same batch to 1e-5 (or 2e-7 x beta x the summed log-probs when
larger: float32 rounding of sums of hundreds of log-probs, see SUM_RTOL), and the same summed log-probs to 1e-5
relative, against a reference model that differs from the policy (with reference == policy both losses are log 2
whatever the code does); tests/test_bench_trl_loss.py runs the same check on another model. Chunked vs whole in this
project: the check computes the first-step objective both ways on its batch (that reference again), and the timed
runs log their first-step losses and log-probs; all must agree to 1e-5 (log-probs relative).

Throughput = pairs (tokens) of the timed steps / their wall time, between consecutive step ends, after warm-up steps.
Memory: peak RSS during the training steps minus the RSS after the side's imports (harness.MemoryProbe) -- model,
optimizer, reference, activations, not the libraries; the absolute whole-process peak (ru_maxrss) is reported too;
glibc's mmap threshold is pinned in every child so that RSS follows live tensors rather than the allocator's history.
Ratios are taken within a repetition (sides run next to each other in time), then their median [min-max]; a shared
machine's other load falls on every side alike, but widens the spreads.
Results: a table on stdout, benchmarks/out/train_vs_trl.json (default workload) or train_vs_trl-vocab<V>.json, and
as the last line of stdout one JSON object: the ratios (median, min, max) and every goal, met or not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness import (MemoryProbe, StepClock, add_result_argument, fmt, parse_args, print_environment, rotated,
                     run_child, save_json, spread, write_result)
from synthetic import Workload, build_models, write_pairs

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
# TRL's DPOConfig turns gradient checkpointing on by default; this project's train config leaves it off. Both settings
# are measured on both sides so that every goal is checked like for like (and project default vs TRL default too).
SIDES = ("adpo", "adpo-gc", "trl-live", "trl-precompute", "trl-live-nogc", "trl-precompute-nogc", "adpo-accum",
         "trl-live-accum", "adpo-whole", "adpo-whole-gc")
DEFAULT_SIDES = SIDES[:8]
DESCRIPTIONS = {
    "adpo": "adpo train_step, DeepSpeed ZeRO-{zero}, cached per-token reference (project default: no checkpointing)",
    "adpo-gc": "adpo train_step, DeepSpeed ZeRO-{zero}, cached reference, train.gradient_checkpointing=true",
    "adpo-whole": "adpo train_step, train.logps_chunk_size=null (plain log-softmax over all response positions)",
    "adpo-whole-gc": "adpo train_step, train.logps_chunk_size=null, train.gradient_checkpointing=true",
    "adpo-accum": "adpo train_step, DeepSpeed ZeRO-{zero}, cached reference, micro-batch 1 x accumulation 8",
    "trl-live-accum": "TRL DPOTrainer defaults (live reference, checkpointing), micro-batch 1 x accumulation 8",
    "trl-live": "TRL DPOTrainer defaults: live reference model, gradient checkpointing on",
    "trl-precompute": "TRL DPOTrainer, precompute_ref_log_probs=True, gradient checkpointing on (default)",
    "trl-live-nogc": "TRL DPOTrainer, live reference model, gradient_checkpointing=False",
    "trl-precompute-nogc": "TRL DPOTrainer, precompute_ref_log_probs=True, gradient_checkpointing=False",
}
# Goals from the issue, as (this project's side, TRL side, measure, bound): throughput ratios at least the bound,
# the peak-memory ratio at most.
GOALS = [
    ("adpo-gc", "trl-live", "throughput", 1.3), ("adpo-gc", "trl-precompute", "throughput", 1.0),
    ("adpo-gc", "trl-live", "peak_training_memory", 0.7),
    ("adpo", "trl-live-nogc", "throughput", 1.3), ("adpo", "trl-precompute-nogc", "throughput", 1.0),
    ("adpo", "trl-live-nogc", "peak_training_memory", 0.7),
    ("adpo", "trl-live", "throughput", 1.3), ("adpo", "trl-precompute", "throughput", 1.0),
    ("adpo", "trl-live", "peak_training_memory", 0.7),
    ("adpo-accum", "trl-live", "throughput", 1.3), ("adpo-accum", "trl-live", "peak_training_memory", 0.7),
    ("adpo-accum", "trl-live-accum", "throughput", 1.3),
    ("adpo-accum", "trl-live-accum", "peak_training_memory", 0.7),
]
# Issue 13's goals at real vocabulary sizes (judged on any workload but the default): like for like against TRL's
# defaults (checkpointing on both, same micro-batch, fp32), against TRL with precomputed reference log-probs, and this
# project chunked against unchunked (memory; the first-step losses must agree to LOSS_TOLERANCE, a goal of its own).
REAL_GOALS = [
    ("adpo-gc", "trl-live", "peak_training_memory", 0.4), ("adpo-gc", "trl-live", "throughput", 1.3),
    ("adpo-gc", "trl-precompute", "peak_training_memory", 0.5), ("adpo-gc", "trl-precompute", "throughput", 1.0),
    ("adpo-gc", "adpo-whole-gc", "peak_training_memory", 1 / 3), ("adpo-gc", "adpo-whole-gc", "first_loss", 1e-5),
    ("adpo", "trl-live-nogc", "peak_training_memory", 0.4), ("adpo", "trl-live-nogc", "throughput", 1.3),
    ("adpo", "trl-precompute-nogc", "peak_training_memory", 0.5), ("adpo", "trl-precompute-nogc", "throughput", 1.0),
    ("adpo", "adpo-whole", "peak_training_memory", 1 / 3), ("adpo", "adpo-whole", "first_loss", 1e-5),
]
GOAL_LABELS = {("adpo-gc", "adpo-whole-gc"): "chunked vs whole, checkpointing on",
               ("adpo", "adpo-whole"): "chunked vs whole, checkpointing off",
               ("adpo-gc", "trl-live"): "checkpointing on both", ("adpo-gc", "trl-precompute"): "checkpointing on both",
               ("adpo", "trl-live-nogc"): "checkpointing off both",
               ("adpo", "trl-precompute-nogc"): "checkpointing off both",
               ("adpo", "trl-live"): "each side's defaults", ("adpo", "trl-precompute"): "each side's defaults",
               ("adpo-accum", "trl-live"): "accumulation 8 vs TRL's defaults",
               ("adpo-accum", "trl-live-accum"): "accumulation 8 on both"}

# The configuration of the issue (and /work/shared/notes/trl-baseline.md): prompts of 44-52 words + BOS, responses of
# 99-159 words + EOS.
WORKLOAD = Workload(vocab_size=503, hidden=256, layers=4, heads=4, prompt_words=(44, 52), response_words=(99, 159))
PAIRS_PER_STEP = 8
# Pairs per optimizer step of this run: PAIRS_PER_STEP unless --pairs-per-step (set by main, in every process).
STEP_PAIRS = PAIRS_PER_STEP
# Issue 13's real sizes: Llama 3's vocabulary, a tiny body, responses of ~400 tokens; micro-batches of 2 pairs.
PRESETS = {
    "default": {"vocab": WORKLOAD.vocab_size, "hidden": WORKLOAD.hidden, "layers": WORKLOAD.layers,
                "heads": WORKLOAD.heads, "prompt_words": WORKLOAD.prompt_words,
                "response_words": WORKLOAD.response_words, "micro_batch": PAIRS_PER_STEP,
                "pairs_per_step": PAIRS_PER_STEP, "sides": ",".join(DEFAULT_SIDES)},
    "real": {"vocab": 128256, "hidden": 64, "layers": 2, "heads": 4, "prompt_words": (44, 52),
             "response_words": (380, 420), "micro_batch": 2, "pairs_per_step": 2,
             "sides": "adpo-gc,adpo-whole-gc,trl-live,trl-precompute"},
}
# What TRL 1.16 offers to save memory and does not run here (see the module docstring); recorded in the JSON.
TRL_OPTIONS_NOT_RUN = {
    "padding_free": "TRL 1.16's DPOTrainer warns and falls back to padding (trainer.padding_free is False; the check "
                    "records it); it needed FlashAttention 2/3 before",
    "activation_offloading": "offloads accelerator activations to host memory: nothing to offload on CPU, and it "
                             "needs torch.accelerator.current_accelerator() (None on this machine)",
    "use_liger_kernel": "deprecated in TRL 1.16, and its kernels need Triton (GPU)",
}
BETA = 0.1
LR = 1e-5
TRAIN_SEED = 0
LOSS_TOLERANCE = 1e-5
# The rewards are beta x differences of two sums of hundreds of float32 log-probs (|sum| ~ 5,000 at 470 tokens and
# vocabulary 128k): summed in another order (TRL's online logsumexp over 32k-column tiles, this project's
# torch.logsumexp), they differ by a few float32 roundings of those sums, ~5e-8 relative. The check allows
# LOSS_TOLERANCE, or SUM_RTOL x beta x |summed log-probs| when larger, for the loss and rewards (~2e-5 in the
# default workload, ~1e-4 at 470 tokens); the summed log-probs themselves are compared to LOSS_TOLERANCE relative.
SUM_RTOL = 2e-7
COMPARED_METRICS = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")
QUICK = {"steps": 2, "warmup": 1, "reps": 1, "sides": "adpo,adpo-accum,trl-live"}
# Every side runs on the CPU, also on a machine with a GPU: the comparison is of the same work on the same device.
CHILD_ENV = {"DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": "true"}


# -------------------------------------------------------------------------------------------------- the workload --

def build_workspace(work: Path, num_pairs: int, seed: int, workload: Workload = WORKLOAD) -> list[int]:
    """Policy (seed 0), a different reference model (seed 1, for the loss check) and pairs.jsonl; returns the
    non-padding tokens of each optimizer step, in the order both sides train on the pairs."""
    from adpo.training.pairs_data import read_pairs, tokenize_pairs

    tokenizer = build_models(workload, {work / "policy": 0, work / "reference": 1})
    write_pairs(workload, work / "pairs" / "pairs.jsonl", num_pairs, seed)
    pairs = tokenize_pairs(read_pairs(work / "pairs" / "pairs.jsonl"), tokenizer)
    counts = [pairs[i].num_tokens for i in visit_order(num_pairs)]
    return [sum(counts[i:i + STEP_PAIRS]) for i in range(0, num_pairs, STEP_PAIRS)]


def visit_order(num_pairs: int) -> list[int]:
    """The order in which the train stage's data schedule visits the pairs in its first epoch (the same for any
    micro-batch size at 8 pairs per step)."""
    from adpo.training.schedule import DataSchedule

    return DataSchedule(num_pairs, micro_batch_size=STEP_PAIRS, accumulation=1, world_size=1,
                        seed=TRAIN_SEED).permutation(0)


def rows_in_visit_order(work: Path) -> list[dict]:
    rows = [json.loads(line) for line in (work / "pairs" / "pairs.jsonl").read_text().splitlines() if line]
    return [{k: rows[i][k] for k in ("prompt", "chosen", "rejected")} for i in visit_order(len(rows))]


# ------------------------------------------------------------------------------------------ this project's side --

def adpo_cfg(work: Path, args, total_steps: int, *overrides: str, micro: int | None = None):
    """The train stage's own config, composed as `adpo-train` would compose it from these overrides (micro-batches
    of `micro` pairs, by default the whole step's)."""
    from adpo.config import compose

    micro = micro or STEP_PAIRS
    return compose("train", [
        f"paths.root={work / 'runs'}", f"model.name_or_path={work / 'policy'}", f"input_dir={work / 'pairs'}",
        "method=dpo", f"method.beta={BETA}", f"deepspeed=zero{args.zero}", "train=tiny", f"train.seed={TRAIN_SEED}",
        f"train.micro_batch_size={micro}", f"train.gradient_accumulation_steps={STEP_PAIRS // micro}",
        f"train.max_steps={total_steps}", f"train.lr={LR}", "train.lora.enabled=false", "progress=false",
        f"train.reference_batch_size={STEP_PAIRS}", "wandb=disabled",
        # A cache of this process's own: every run computes (and times) the reference log-probs.
        f"train.reference_cache_dir={work / 'cache' / str(os.getpid())}", *overrides,
    ])


def run_adpo(args, work: Path, checkpointing: bool = False, micro: int | None = None, chunked: bool = True) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    # Libraries this side imports lazily later on: their import cost is not training memory.
    import deepspeed  # noqa: F401
    import hydra  # noqa: F401
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    from adpo.training.engine import zero_stage
    from adpo.training.loop import setup_training
    from adpo.training.step import train_step

    memory = MemoryProbe()
    total_steps = args.warmup + args.steps
    setup = setup_training(adpo_cfg(work, args, total_steps,
                                    f"train.gradient_checkpointing={str(checkpointing).lower()}",
                                    *([] if chunked else ["train.logps_chunk_size=null"]), micro=micro))
    setup.reference_cache.unlink()
    memory.start()
    clock = StepClock(args.warmup)
    losses, first = [], {}
    for step in range(total_steps):
        metrics = train_step(setup.engine, setup.micro_batches(step), setup.method,
                             logps_chunk_size=setup.logps_chunk_size)
        losses.append(float(metrics["loss"]))
        first = first or {k: float(v) for k, v in metrics.items()}
        clock.step_end()
    return {"first_loss": losses[0], "losses": losses, "first_metrics": first,
            "precompute_seconds": setup.reference_seconds,
            "step_seconds": clock.step_seconds(), **memory.report(), "threads": torch.get_num_threads(),
            "zero_stage": zero_stage(setup.ds_config), "logps_chunk_size": setup.logps_chunk_size,
            "micro_batch": micro, "gradient_checkpointing": checkpointing,
            "optimizer": type(setup.engine.optimizer).__name__}


# ----------------------------------------------------------------------------------------------------- TRL side --

def trl_config(out_dir: Path, *, steps: int, precompute: bool, micro: int, accumulation: int, **extra):
    """DPOConfig for the same training as this project's: sigmoid loss, same beta and rate, pairs in dataset order."""
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, report_to=[], disable_tqdm=True, save_strategy="no",
        per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation, max_steps=steps,
        learning_rate=LR, beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=micro * accumulation, train_sampling_strategy="sequential",
        dataloader_num_workers=0, max_length=None, model_init_kwargs={"dtype": "float32"}, seed=0, **extra,
    )


def record_first_step(trainer) -> dict:
    """Filled in by the trainer's first compute_loss: "loss" and what the step logs (rewards, log-probs)."""
    first: dict = {}
    compute_loss = trainer.compute_loss

    def recording(*a, **kw):
        out = compute_loss(*a, **kw)
        if not first:
            first["loss"] = float((out[0] if isinstance(out, tuple) else out).detach())
            # The trainer clears its metrics once they are logged: read them now.
            first.update({k: v[-1] for k, v in trainer._metrics["train"].items() if isinstance(v, list) and v})
        return out

    trainer.compute_loss = recording
    return first


def run_trl(args, work: Path, precompute: bool, checkpointing: bool | None = None,
            micro: int | None = None) -> dict:
    """checkpointing None keeps TRL's default (on); micro None: the whole step in one micro-batch."""
    import torch

    micro = micro or STEP_PAIRS
    torch.set_num_threads(args.threads)
    # Libraries this side imports lazily later on (accelerate imports deepspeed when it is installed).
    import transformers.models.llama.modeling_llama  # noqa: F401
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    with contextlib.suppress(ImportError):
        import deepspeed  # noqa: F401
    from trl import DPOTrainer

    memory = MemoryProbe()
    total_steps = args.warmup + args.steps
    tokenizer = AutoTokenizer.from_pretrained(str(work / "policy"))
    dataset = Dataset.from_list(rows_in_visit_order(work))

    timings = {"precompute_seconds": 0.0}
    original = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **kw):
        started = time.perf_counter()
        try:
            return original(self, *a, **kw)
        finally:
            timings["precompute_seconds"] += time.perf_counter() - started

    DPOTrainer._precompute_ref_logps = timed_precompute
    clock = StepClock(args.warmup)
    threads = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, *_, **__):
            memory.start()
            threads["train"] = torch.get_num_threads()

        def on_step_end(self, *_, **__):
            clock.step_end()

    extra = {} if checkpointing is None else {"gradient_checkpointing": checkpointing}
    config = trl_config(work / f"trl-{os.getpid()}", steps=total_steps, precompute=precompute, micro=micro,
                        accumulation=STEP_PAIRS // micro, **extra)
    trainer = DPOTrainer(model=str(work / "policy"), args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[Probe()])
    first = record_first_step(trainer)
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {"first_loss": first["loss"], "first_metrics": {k: float(v) for k, v in first.items()},
            "precompute_seconds": timings["precompute_seconds"],
            "step_seconds": clock.step_seconds(), **memory.report(), "threads": threads["train"],
            "optimizer": type(optimizer).__name__, "ref_model_loaded": trainer.ref_model is not None,
            "micro_batch": micro,
            "gradient_checkpointing": bool(trainer.args.gradient_checkpointing)}


# --------------------------------------------------------------------------------------------------- the check --

def check_against_trl(*, policy: Path, reference: Path, tokenizer, rows: Sequence[dict], pairs: Sequence,
                      ours: Mapping[str, float], batch_size: int, out_dir: Path) -> dict:
    """Does TRL's DPOTrainer (live reference, then precomputed) tokenise `rows` as this project did (`pairs`), and
    compute on its first step -- the first `batch_size` rows -- the loss and rewards this project's first step on
    the same pairs computed (`ours`)? The reference model must differ from the policy, or any code computes log 2.
    Returns the TRL figures and "problems", a list of what differs (empty: the check passed)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    summed = max(abs(ours["logps/chosen"]), abs(ours["logps/rejected"]))
    tolerance = max(LOSS_TOLERANCE, SUM_RTOL * BETA * summed)
    out: dict = {"ours": dict(ours), "log2": float(torch.log(torch.tensor(2.0))), "problems": [],
                 "loss_and_rewards_tolerance": tolerance}
    if abs(ours["loss"] - out["log2"]) <= 1e-3:
        out["problems"].append("this project's loss is log 2: reference == policy in effect, the check cannot fail")
    for name, precompute in (("trl-live", False), ("trl-precompute", True)):
        trainer = DPOTrainer(
            model=str(policy), ref_model=AutoModelForCausalLM.from_pretrained(str(reference), dtype=torch.float32),
            args=trl_config(out_dir / name, steps=1, precompute=precompute, micro=batch_size, accumulation=1),
            train_dataset=Dataset.from_list([dict(r) for r in rows]), processing_class=tokenizer)
        if name == "trl-live":
            ds = trainer.train_dataset
            mismatched = [i for i, p in enumerate(pairs)
                          if (ds[i]["prompt_ids"], ds[i]["chosen_ids"], ds[i]["rejected_ids"])
                          != (p.prompt_ids, p.chosen_ids, p.rejected_ids)]
            out["tokenisation_mismatches"] = len(mismatched)
            if mismatched:
                out["problems"].append(f"TRL tokenised {len(mismatched)} pairs differently (first: {mismatched[0]})")
        first = record_first_step(trainer)
        trainer.train()
        out[name] = {**first, "abs_diff": abs(first["loss"] - ours["loss"])}
        if out[name]["abs_diff"] > tolerance:
            out["problems"].append(f"{name}: loss {first['loss']:.7f}, this project's {ours['loss']:.7f}")
        for metric in COMPARED_METRICS:
            bound = LOSS_TOLERANCE * max(1.0, abs(ours[metric])) if metric.startswith("logps") else tolerance
            if abs(first[metric] - ours[metric]) > bound:
                out["problems"].append(f"{name}: {metric} {first[metric]:.7f}, this project's {ours[metric]:.7f}")
    return out


def run_check(args, work: Path) -> dict:
    """The check on this benchmark's workload, this project's side being the train stage's first step."""
    import torch

    torch.set_num_threads(args.threads)
    from adpo.training.loop import setup_training
    from adpo.training.step import train_step

    setup = setup_training(adpo_cfg(work, args, 1, f"train.reference_model={work / 'reference'}"))
    setup.reference_cache.unlink()
    chunked_vs_whole = compare_chunked_whole(setup)
    metrics = train_step(setup.engine, setup.micro_batches(0), setup.method, logps_chunk_size=setup.logps_chunk_size)
    order = [i for idx in setup.schedule.micro_batches(0, 0) for i in idx]
    if order != visit_order(len(setup.pairs))[:STEP_PAIRS]:
        raise RuntimeError("the train stage's first step is not the first pairs of visit_order(): the sides would "
                           "train on different batches")
    rows = rows_in_visit_order(work)
    check = check_against_trl(policy=work / "policy", reference=work / "reference", tokenizer=setup.tokenizer,
                              rows=rows, pairs=[setup.pairs[i] for i in visit_order(len(rows))],
                              ours={k: float(v) for k, v in metrics.items()}, batch_size=STEP_PAIRS,
                              out_dir=work / f"check-{os.getpid()}")
    check["trl_padding_free_honoured"] = trl_padding_free_honoured(work, setup.tokenizer, rows)
    check["chunked_vs_whole"] = chunked_vs_whole
    if chunked_vs_whole["loss_abs_diff"] > LOSS_TOLERANCE:
        check["problems"].append("this project, chunked vs whole: the loss differs by "
                                 f"{chunked_vs_whole['loss_abs_diff']:.2e}")
    return check


def compare_chunked_whole(setup) -> dict:
    """This project's first-step objective (no update) on the check's batch -- against the reference that differs
    from the policy, so the loss is not log 2 -- with the policy's log-probs in chunks of train.logps_chunk_size and
    whole (chunk size None): the loss and the logged metrics must agree to LOSS_TOLERANCE."""
    import torch

    from adpo.training.step import compute_loss

    out = {}
    batches = setup.micro_batches(0)
    with torch.no_grad():
        for name, chunk in (("chunked", setup.logps_chunk_size), ("whole", None)):
            ms = [compute_loss(setup.engine, b, setup.method, logps_chunk_size=chunk)[1] for b in batches]
            out[name] = {k: float(sum(m[k] for m in ms) / len(ms)) for k in ("loss", *COMPARED_METRICS)}
    out["chunk_size"] = setup.logps_chunk_size
    out["loss_abs_diff"] = abs(out["chunked"]["loss"] - out["whole"]["loss"])
    out["max_metric_rel_diff"] = max(abs(out["chunked"][k] - out["whole"][k]) / max(1.0, abs(out["whole"][k]))
                                     for k in COMPARED_METRICS)
    return out


def trl_padding_free_honoured(work: Path, tokenizer, rows: Sequence[dict]) -> bool:
    """Does TRL's DPOTrainer, asked for padding_free=True here (CPU, no FlashAttention), keep it? (TRL 1.16: no, it
    warns and falls back to padding.)"""
    import warnings

    from datasets import Dataset
    from trl import DPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(model=str(work / "policy"), processing_class=tokenizer,
                             args=trl_config(work / f"padfree-{os.getpid()}", steps=1, precompute=False,
                                             micro=STEP_PAIRS, accumulation=1, padding_free=True),
                             train_dataset=Dataset.from_list([dict(r) for r in rows[:STEP_PAIRS]]))
    return bool(getattr(trainer, "padding_free", trainer.args.padding_free))


# ------------------------------------------------------------------------------------------------------ parent --

def run_side(side: str, args, work: Path) -> dict:
    return run_child(__file__, ["--side", side, "--work", str(work), "--steps", str(args.steps), "--warmup",
                                str(args.warmup), "--threads", str(args.threads), "--zero", str(args.zero),
                                "--micro-batch", str(args.micro_batch), "--pairs-per-step", str(STEP_PAIRS)],
                     threads=args.threads, steady_rss=True, env=CHILD_ENV)


def summarise_run(run: dict, tokens_per_step: list[int], warmup: int) -> dict:
    seconds = run["step_seconds"]
    total = sum(seconds)
    return {**run,
            "pairs_per_second": STEP_PAIRS * len(seconds) / total,
            "tokens_per_second": sum(tokens_per_step[warmup:warmup + len(seconds)]) / total,
            "median_step_seconds": statistics.median(seconds)}


def summarise(runs: list[dict], sides: list[str], zero: int) -> dict:
    summary = {}
    for side in sides:
        rs = [r for r in runs if r["side"] == side]
        if not rs:
            continue
        summary[side] = {
            "description": DESCRIPTIONS[side].format(zero=zero),
            "pairs_per_second": spread([r["pairs_per_second"] for r in rs]),
            "tokens_per_second": spread([r["tokens_per_second"] for r in rs]),
            "precompute_seconds": spread([r["precompute_seconds"] for r in rs]),
            "peak_training_above_imports_mib": spread([r["peak_span_above_baseline_mib"] or 0.0 for r in rs]),
            "peak_rss_lifetime_mib": spread([r["peak_rss_lifetime_mib"] for r in rs]),
            "rss_after_imports_mib": spread([r["rss_baseline_mib"] for r in rs]),
            "first_loss": spread([r["first_loss"] for r in rs]),
        }
    return summary


def compared_pairs(sides: Sequence[str]) -> list[tuple[str, str]]:
    """(this project's side, the side it is measured against): every TRL side, and chunked against whole."""
    mine = [s for s in sides if s.startswith("adpo") and not s.startswith("adpo-whole")]
    pairs = [(m, t) for m in mine for t in sides if t.startswith("trl")]
    pairs += [(m, m.replace("adpo", "adpo-whole", 1)) for m in mine
              if m.replace("adpo", "adpo-whole", 1) in sides]
    return pairs


def first_logps_diff(a: dict, b: dict) -> float:
    """The largest relative difference (to max(1, |value|), as the check's) of the first step's summed policy
    log-probs, which TRL's runs and ours log alike."""
    ma, mb = a.get("first_metrics") or {}, b.get("first_metrics") or {}
    keys = [k for k in ("logps/chosen", "logps/rejected") if k in ma and k in mb]
    return max((abs(ma[k] - mb[k]) / max(1.0, abs(mb[k])) for k in keys), default=0.0)


def paired_ratios(runs: list[dict], sides: list[str]) -> dict:
    """This project's sides over TRL's (and chunked over whole), within a repetition (runs next to each other in
    time), then their spread; with the first-step losses' absolute difference."""
    by_side = {side: {r["rep"]: r for r in runs if r["side"] == side} for side in sides}
    ratios = {}
    for mine, theirs in compared_pairs(sides):
        a, b = by_side[mine], by_side[theirs]
        reps = sorted(set(a) & set(b))
        if not reps:
            continue

        def ratio(key: str, a=a, b=b, reps=reps) -> dict:
            return spread([a[k][key] / b[k][key] for k in reps])

        ratios[f"{mine}/{theirs}"] = {"throughput": ratio("pairs_per_second"),
                                      "peak_training_memory": ratio("peak_span_above_baseline_mib"),
                                      "peak_lifetime_memory": ratio("peak_rss_lifetime_mib"),
                                      "first_loss_abs_diff": spread([abs(a[k]["first_loss"] - b[k]["first_loss"])
                                                                     for k in reps]),
                                      "first_logps_rel_diff": spread([first_logps_diff(a[k], b[k]) for k in reps])}
    return ratios


def check_goals(ratios: dict, goals: Sequence[tuple] = GOALS, check: dict | None = None) -> list[dict]:
    """Throughput: the median ratio at least the bound; memory: at most; first_loss (chunked vs whole): the check's
    difference (against a reference that differs from the policy) and the timed runs' first-step losses and
    log-probs (reference == policy there, so their losses are log 2), the largest absolute difference at most."""
    out = []
    for mine, theirs, measure, bound in goals:
        r = ratios.get(f"{mine}/{theirs}")
        if r is None:
            continue
        if measure == "first_loss":
            value = max(r["first_loss_abs_diff"]["max"], r["first_logps_rel_diff"]["max"],
                        *([] if check is None or "chunked_vs_whole" not in check
                          else [check["chunked_vs_whole"]["loss_abs_diff"]]))
        else:
            value = r[measure]["median"]
        out.append({"mine": mine, "theirs": theirs, "setting": GOAL_LABELS[(mine, theirs)], "measure": measure,
                    "bound": bound, "ratio": value,
                    "met": value >= bound if measure == "throughput" else value <= bound})
    return out


def print_check(check: dict) -> None:
    print(f"  adpo {check['ours']['loss']:.7f}  trl-live {check['trl-live']['loss']:.7f}  "
          f"trl-precompute {check['trl-precompute']['loss']:.7f}  (log 2 = {check['log2']:.7f})  "
          f"tokenisation mismatches {check['tokenisation_mismatches']}  tolerance "
          f"{check.get('loss_and_rewards_tolerance', LOSS_TOLERANCE):.1e}  "
          f"{'FAIL: ' + '; '.join(check['problems']) if check['problems'] else 'PASS'}", flush=True)
    if "chunked_vs_whole" in check:
        c = check["chunked_vs_whole"]
        print(f"  this project, chunks of {c['chunk_size']} vs whole: loss {c['chunked']['loss']:.7f} vs "
              f"{c['whole']['loss']:.7f} (|diff| {c['loss_abs_diff']:.1e}; rewards and log-probs relative diff <= "
              f"{c['max_metric_rel_diff']:.1e})", flush=True)
    if "trl_padding_free_honoured" in check:
        print(f"  TRL padding_free=True honoured: {check['trl_padding_free_honoured']}", flush=True)


def print_tables(summary: dict, ratios: dict, goals: list[dict], check: dict | None, args, num_pairs: int) -> None:
    print()
    print(f"{'side':20s} {'pairs/s':>22s} {'tokens/s':>24s} {'precompute s':>14s} {'train peak MiB*':>20s} "
          f"{'lifetime peak MiB':>20s} {'first loss':>12s}")
    for side, s in summary.items():
        print(f"{side:20s} {fmt(s['pairs_per_second']):>22s} {fmt(s['tokens_per_second'], 0):>24s} "
              f"{s['precompute_seconds']['median']:14.2f} {fmt(s['peak_training_above_imports_mib'], 0):>20s} "
              f"{fmt(s['peak_rss_lifetime_mib'], 0):>20s} {s['first_loss']['median']:12.7f}")
    print("* peak RSS during the training steps minus RSS after the side's imports; median [min-max] over "
          f"{args.reps} repetitions; precompute over {num_pairs} pairs")
    print()
    for name, r in ratios.items():
        print(f"{name:32s} throughput {fmt(r['throughput'])}x   train-peak memory {fmt(r['peak_training_memory'])}x"
              f"   lifetime-peak memory {fmt(r['peak_lifetime_memory'])}x   |first-loss diff| "
              f"<= {r['first_loss_abs_diff']['max']:.1e}")
    print()
    for g in goals:
        pair = f"{g['mine']}/{g['theirs']}"
        if g["measure"] == "first_loss":
            value = f"|diff| {g['ratio']:.1e} <= {g['bound']:.0e}"
        else:
            sign = ">=" if g["measure"] == "throughput" else "<="
            value = f"{g['ratio']:5.2f}x {sign} {g['bound']:.2f}x"
        print(f"goal {g['measure']:20s} {pair:28s} {value} ({g['setting']}): {'MET' if g['met'] else 'NOT MET'}")
    if check is not None:
        print(f"first-step loss check (|adpo - trl| <= {check.get('loss_and_rewards_tolerance', LOSS_TOLERANCE):.1e}): "
              f"{'FAIL' if check['problems'] else 'PASS'}")


def workload_of(args) -> Workload:
    return Workload(vocab_size=args.vocab, hidden=args.hidden, layers=args.layers, heads=args.heads,
                    prompt_words=tuple(args.prompt_words), response_words=tuple(args.response_words))


def main_parent(args) -> None:
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is not installed: pip install -e '.[bench]' (the optional extra 'bench')") from None
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise SystemExit(f"unknown sides {unknown}; choose from {SIDES}")
    if STEP_PAIRS % args.micro_batch:
        raise SystemExit(f"--micro-batch must divide the {STEP_PAIRS} pairs of an optimizer step")
    workload = workload_of(args)
    default_workload = workload == WORKLOAD and args.micro_batch == STEP_PAIRS == PAIRS_PER_STEP
    goal_list = GOALS if default_workload else REAL_GOALS
    environment = print_environment()
    total_steps = args.warmup + args.steps
    num_pairs = total_steps * STEP_PAIRS
    # A kill runs the clean-up below (the workspace) like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="adpo-bench-trl-"))
    failures: list[dict] = []
    try:
        print(f"workspace {work}: {num_pairs} pairs, model {workload.layers}x{workload.hidden}, vocabulary "
              f"{workload.vocab_size}, micro-batch {args.micro_batch} x accumulation "
              f"{STEP_PAIRS // args.micro_batch}, {args.threads} threads, {args.reps} repetitions of {sides}",
              flush=True)
        tokens_per_step = build_workspace(work, num_pairs, seed=args.seed, workload=workload)
        check = None
        if not args.skip_check:
            print("check: tokenisation and first-step DPO loss ...", flush=True)
            check = run_side("check", args, work)
            print_check(check)
        runs: list[dict] = []
        failed: set[str] = set()
        for rep in range(args.reps):
            for side in rotated(sides, rep):
                if side in failed:
                    continue
                try:
                    run = summarise_run(run_side(side, args, work), tokens_per_step, args.warmup)
                except RuntimeError as e:  # e.g. out of memory: the other sides still run
                    failed.add(side)
                    failures.append({"side": side, "rep": rep, "error": str(e)})
                    print(f"  rep {rep} {side:20s} FAILED ({e}); left out of the later repetitions", flush=True)
                    continue
                run.update(side=side, rep=rep)
                runs.append(run)
                print(f"  rep {rep} {side:20s} {run['pairs_per_second']:6.2f} pairs/s  "
                      f"{run['tokens_per_second']:8.0f} tok/s  train peak "
                      f"+{run['peak_span_above_baseline_mib'] or 0:.0f} MiB  "
                      f"(lifetime peak {run['peak_rss_lifetime_mib']:.0f} MiB)  first loss {run['first_loss']:.7f}",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary, ratios = summarise(runs, sides, args.zero), paired_ratios(runs, sides)
    goals = check_goals(ratios, goal_list, check)
    print_tables(summary, ratios, goals, check, args, num_pairs)
    path = OUT / ("train_vs_trl.json" if default_workload else f"train_vs_trl-vocab{workload.vocab_size}.json")
    config = {"steps": args.steps, "warmup": args.warmup, "reps": args.reps, "threads": args.threads,
              "pairs_per_step": STEP_PAIRS, "micro_batch": args.micro_batch,
              "gradient_accumulation": STEP_PAIRS // args.micro_batch, "hidden": workload.hidden,
              "layers": workload.layers, "heads": workload.heads, "vocab": workload.vocab_size,
              "prompt_tokens": [n + 1 for n in workload.prompt_words],
              "response_tokens": [n + 1 for n in workload.response_words], "beta": BETA, "lr": LR,
              "deepspeed_zero_stage": args.zero, "sides": sides, "dtype": "float32", "device": "cpu",
              "mean_tokens_per_step": statistics.mean(tokens_per_step),
              "goals": "GOALS (default workload)" if goal_list is GOALS else "REAL_GOALS (issue 13)"}
    save_json(path, {
        "benchmark": "train_vs_trl", "config": config,
        "memory_measure": "peak_training_above_imports_mib = VmHWM over the training steps (reset at training start "
                          "via /proc/self/clear_refs) minus VmRSS after the side's imports; "
                          "peak_rss_lifetime_mib = ru_maxrss of the whole child process; every child runs with "
                          "MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the RSS",
        "environment": environment, "check": check, "trl_options_not_run": TRL_OPTIONS_NOT_RUN, "failures": failures,
        "summary": summary, "ratios": ratios, "goals": goals, "runs": runs,
    })
    print(f"wrote {path}")
    # The last line: the ratios and goals, for whoever reads this output.
    print(json.dumps({
        "benchmark": "train_vs_trl", "vocab": workload.vocab_size, "micro_batch": args.micro_batch,
        "reps": args.reps, "steps": args.steps, "result_file": str(path),
        "loss_check": None if check is None else ("fail" if check["problems"] else "pass"),
        "trl_padding_free_honoured": None if check is None else check.get("trl_padding_free_honoured"),
        "sides": {side: {"pairs_per_second": s["pairs_per_second"]["median"],
                         "tokens_per_second": s["tokens_per_second"]["median"],
                         "peak_training_mib": s["peak_training_above_imports_mib"]["median"],
                         "first_loss": s["first_loss"]["median"]} for side, s in summary.items()},
        "ratios": {name: {k: {m: r[k][m] for m in ("median", "min", "max")}
                          for k in ("throughput", "peak_training_memory", "first_loss_abs_diff")}
                   for name, r in ratios.items()},
        "goals": [{"pair": f"{g['mine']}/{g['theirs']}", "measure": g["measure"], "bound": g["bound"],
                   "value": g["ratio"], "met": g["met"]} for g in goals],
        "failures": [{"side": f["side"], "rep": f["rep"]} for f in failures],
    }), flush=True)
    if check is not None and check["problems"]:
        raise SystemExit("the first-step loss check failed: the throughput comparison is not like for like")
    if failures:
        raise SystemExit(f"sides failed: {sorted({f['side'] for f in failures})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first (at least 1)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; sides interleaved within each")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="workload and sides: default (vocabulary 503) or real (issue 13: vocabulary 128,256, "
                             "64-wide, responses ~400 tokens, micro-batch 2); the options below override it")
    parser.add_argument("--sides", help=f"comma-separated, from {SIDES} (default: the preset's)")
    parser.add_argument("--vocab", type=int, help="vocabulary size, special tokens included")
    parser.add_argument("--hidden", type=int, help="model width")
    parser.add_argument("--layers", type=int, help="decoder layers")
    parser.add_argument("--heads", type=int, help="attention heads")
    parser.add_argument("--prompt-words", type=int, nargs=2, metavar=("MIN", "MAX"), help="words per prompt (+BOS)")
    parser.add_argument("--response-words", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="words per response (+EOS)")
    parser.add_argument("--pairs-per-step", type=int, help=f"pairs per optimizer step (default {PAIRS_PER_STEP})")
    parser.add_argument("--micro-batch", type=int, help="pairs per micro-batch (divides --pairs-per-step)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each side")
    parser.add_argument("--zero", type=int, default=0, choices=(0, 1, 2, 3), help="this project's ZeRO stage")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pairs")
    parser.add_argument("--skip-check", action="store_true", help="skip the tokenisation / first-step loss check")
    # Internal: one side in this (fresh) process.
    parser.add_argument("--side", choices=(*SIDES, "check"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    add_result_argument(parser)
    args = parse_args(parser, QUICK)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    global STEP_PAIRS
    STEP_PAIRS = args.pairs_per_step
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the timed span starts at the end of a step)")
    if args.result is None:
        main_parent(args)
        return
    micro = args.micro_batch
    runners = {"adpo": lambda: run_adpo(args, args.work, micro=micro),
               "adpo-gc": lambda: run_adpo(args, args.work, checkpointing=True, micro=micro),
               "adpo-whole": lambda: run_adpo(args, args.work, micro=micro, chunked=False),
               "adpo-whole-gc": lambda: run_adpo(args, args.work, checkpointing=True, micro=micro, chunked=False),
               "adpo-accum": lambda: run_adpo(args, args.work, micro=1),
               "trl-live": lambda: run_trl(args, args.work, precompute=False, micro=micro),
               "trl-precompute": lambda: run_trl(args, args.work, precompute=True, micro=micro),
               "trl-live-nogc": lambda: run_trl(args, args.work, precompute=False, checkpointing=False, micro=micro),
               "trl-precompute-nogc": lambda: run_trl(args, args.work, precompute=True, checkpointing=False,
                                                      micro=micro),
               "trl-live-accum": lambda: run_trl(args, args.work, precompute=False, micro=1),
               "check": lambda: run_check(args, args.work)}
    write_result(args.result, runners[args.side]())


if __name__ == "__main__":
    main()
