"""Training throughput and peak memory: this project's train step against TRL's DPOTrainer, side by side.

    .venv/bin/python benchmarks/train_vs_trl.py [--steps 16 --reps 3 --warmup 2 --sides adpo,trl-live,...] [--quick]

Sides (each run in its own fresh subprocess; the parent interleaves them, rotating the order every repetition):
  adpo            this project: what the train stage builds (adpo.training.loop.setup_training: reference log-probs
                  cached first, time reported apart; the DeepSpeed engine), then its train step
  adpo-gc         adpo with train.gradient_checkpointing=true
  trl-live        TRL DPOTrainer defaults: live reference model, gradient checkpointing on (DPOConfig's default)
  trl-precompute  TRL DPOTrainer with precompute_ref_log_probs=True (time to precompute reported apart)
  trl-*-nogc      the same with gradient_checkpointing=False
  *-accum         the same 8 pairs per optimizer step as 8 micro-batches of 1 pair (gradient accumulation 8), on
                  both sides with their other defaults: the usual way to trade speed for activation memory
Goals are checked like for like (checkpointing on both sides, off on both, accumulation on both), for each side's
defaults, and for accumulation on this side against TRL's defaults.

Both sides: the same random 4-layer, 256-wide Llama (word-level vocabulary of 503), the same pairs in the same order
(the train stage's data schedule; TRL is fed the pairs in that order), prompts ~48 tokens, responses 100-160, 8 pairs
per optimizer step, fp32 on CPU, torch.set_num_threads(2). Before timing, a `check` subprocess verifies that both
tokenise every pair identically and that the first training step computes the same DPO loss (sigmoid, same beta) and
rewards on the same batch to 1e-5, against a reference model that differs from the policy (with reference == policy
both losses are log 2 whatever the code does); tests/test_bench_trl_loss.py runs the same check on another model.

Throughput = pairs (tokens) of the timed steps / their wall time, between consecutive step ends, after warm-up steps.
Memory: peak RSS during the training steps minus the RSS after the side's imports (harness.MemoryProbe) -- model,
optimizer, reference, activations, not the libraries; the absolute whole-process peak (ru_maxrss) is reported too;
glibc's mmap threshold is pinned in every child so that RSS follows live tensors rather than the allocator's history.
Results: a table on stdout and benchmarks/out/train_vs_trl.json.
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
         "trl-live-accum")
DESCRIPTIONS = {
    "adpo": "adpo train_step, DeepSpeed ZeRO-{zero}, cached per-token reference (project default: no checkpointing)",
    "adpo-gc": "adpo train_step, DeepSpeed ZeRO-{zero}, cached reference, train.gradient_checkpointing=true",
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
GOAL_LABELS = {("adpo-gc", "trl-live"): "checkpointing on both", ("adpo-gc", "trl-precompute"): "checkpointing on both",
               ("adpo", "trl-live-nogc"): "checkpointing off both", ("adpo", "trl-precompute-nogc"): "checkpointing off both",
               ("adpo", "trl-live"): "each side's defaults", ("adpo", "trl-precompute"): "each side's defaults",
               ("adpo-accum", "trl-live"): "accumulation 8 vs TRL's defaults",
               ("adpo-accum", "trl-live-accum"): "accumulation 8 on both"}

# The configuration of the issue (and /work/shared/notes/trl-baseline.md): prompts of 44-52 words + BOS, responses of
# 99-159 words + EOS.
WORKLOAD = Workload(vocab_size=503, hidden=256, layers=4, heads=4, prompt_words=(44, 52), response_words=(99, 159))
PAIRS_PER_STEP = 8
BETA = 0.1
LR = 1e-5
TRAIN_SEED = 0
LOSS_TOLERANCE = 1e-5
COMPARED_METRICS = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")
QUICK = {"steps": 2, "warmup": 1, "reps": 1, "sides": "adpo,adpo-accum,trl-live"}
# Every side runs on the CPU, also on a machine with a GPU: the comparison is of the same work on the same device.
CHILD_ENV = {"DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": "true"}


# -------------------------------------------------------------------------------------------------- the workload --

def build_workspace(work: Path, num_pairs: int, seed: int) -> list[int]:
    """Policy (seed 0), a different reference model (seed 1, for the loss check) and pairs.jsonl; returns the
    non-padding tokens of each optimizer step, in the order both sides train on the pairs."""
    from adpo.training.pairs_data import read_pairs, tokenize_pairs

    tokenizer = build_models(WORKLOAD, {work / "policy": 0, work / "reference": 1})
    write_pairs(WORKLOAD, work / "pairs" / "pairs.jsonl", num_pairs, seed)
    pairs = tokenize_pairs(read_pairs(work / "pairs" / "pairs.jsonl"), tokenizer)
    counts = [pairs[i].num_tokens for i in visit_order(num_pairs)]
    return [sum(counts[i:i + PAIRS_PER_STEP]) for i in range(0, num_pairs, PAIRS_PER_STEP)]


def visit_order(num_pairs: int) -> list[int]:
    """The order in which the train stage's data schedule visits the pairs in its first epoch (the same for any
    micro-batch size at 8 pairs per step)."""
    from adpo.training.schedule import DataSchedule

    return DataSchedule(num_pairs, micro_batch_size=PAIRS_PER_STEP, accumulation=1, world_size=1,
                        seed=TRAIN_SEED).permutation(0)


def rows_in_visit_order(work: Path) -> list[dict]:
    rows = [json.loads(line) for line in (work / "pairs" / "pairs.jsonl").read_text().splitlines() if line]
    return [{k: rows[i][k] for k in ("prompt", "chosen", "rejected")} for i in visit_order(len(rows))]


# ------------------------------------------------------------------------------------------ this project's side --

def adpo_cfg(work: Path, args, total_steps: int, *overrides: str, micro: int = PAIRS_PER_STEP):
    """The train stage's own config, composed as `adpo-train` would compose it from these overrides."""
    from adpo.config import compose

    return compose("train", [
        f"paths.root={work / 'runs'}", f"model.name_or_path={work / 'policy'}", f"input_dir={work / 'pairs'}",
        "method=dpo", f"method.beta={BETA}", f"deepspeed=zero{args.zero}", "train=tiny", f"train.seed={TRAIN_SEED}",
        f"train.micro_batch_size={micro}", f"train.gradient_accumulation_steps={PAIRS_PER_STEP // micro}",
        f"train.max_steps={total_steps}", f"train.lr={LR}", "train.lora.enabled=false", "progress=false",
        f"train.reference_batch_size={PAIRS_PER_STEP}", "wandb=disabled",
        # A cache of this process's own: every run computes (and times) the reference log-probs.
        f"train.reference_cache_dir={work / 'cache' / str(os.getpid())}", *overrides,
    ])


def run_adpo(args, work: Path, checkpointing: bool = False, micro: int = PAIRS_PER_STEP) -> dict:
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
                                    f"train.gradient_checkpointing={str(checkpointing).lower()}", micro=micro))
    setup.reference_cache.unlink()
    memory.start()
    clock = StepClock(args.warmup)
    first_loss = None
    for step in range(total_steps):
        metrics = train_step(setup.engine, setup.micro_batches(step), setup.method)
        if first_loss is None:
            first_loss = float(metrics["loss"])
        clock.step_end()
    return {"first_loss": first_loss, "precompute_seconds": setup.reference_seconds,
            "step_seconds": clock.step_seconds(), **memory.report(), "threads": torch.get_num_threads(),
            "zero_stage": zero_stage(setup.ds_config),
            "gradient_checkpointing": checkpointing, "optimizer": type(setup.engine.optimizer).__name__}


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
            micro: int = PAIRS_PER_STEP) -> dict:
    """checkpointing None keeps TRL's default (on)."""
    import torch

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
                        accumulation=PAIRS_PER_STEP // micro, **extra)
    trainer = DPOTrainer(model=str(work / "policy"), args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[Probe()])
    first = record_first_step(trainer)
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {"first_loss": first["loss"], "precompute_seconds": timings["precompute_seconds"],
            "step_seconds": clock.step_seconds(), **memory.report(), "threads": threads["train"],
            "optimizer": type(optimizer).__name__, "ref_model_loaded": trainer.ref_model is not None,
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

    out: dict = {"ours": dict(ours), "log2": float(torch.log(torch.tensor(2.0))), "problems": []}
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
        if out[name]["abs_diff"] > LOSS_TOLERANCE:
            out["problems"].append(f"{name}: loss {first['loss']:.7f}, this project's {ours['loss']:.7f}")
        for metric in COMPARED_METRICS:
            if abs(first[metric] - ours[metric]) > LOSS_TOLERANCE * max(1.0, abs(ours[metric])):
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
    metrics = train_step(setup.engine, setup.micro_batches(0), setup.method)
    order = [i for idx in setup.schedule.micro_batches(0, 0) for i in idx]
    if order != visit_order(len(setup.pairs))[:PAIRS_PER_STEP]:
        raise RuntimeError("the train stage's first step is not the first pairs of visit_order(): the sides would "
                           "train on different batches")
    rows = rows_in_visit_order(work)
    return check_against_trl(policy=work / "policy", reference=work / "reference", tokenizer=setup.tokenizer,
                             rows=rows, pairs=[setup.pairs[i] for i in visit_order(len(rows))],
                             ours={k: float(v) for k, v in metrics.items()}, batch_size=PAIRS_PER_STEP,
                             out_dir=work / f"check-{os.getpid()}")


# ------------------------------------------------------------------------------------------------------ parent --

def run_side(side: str, args, work: Path) -> dict:
    return run_child(__file__, ["--side", side, "--work", str(work), "--steps", str(args.steps), "--warmup",
                                str(args.warmup), "--threads", str(args.threads), "--zero", str(args.zero)],
                     threads=args.threads, steady_rss=True, env=CHILD_ENV)


def summarise_run(run: dict, tokens_per_step: list[int], warmup: int) -> dict:
    seconds = run["step_seconds"]
    total = sum(seconds)
    return {**run,
            "pairs_per_second": PAIRS_PER_STEP * len(seconds) / total,
            "tokens_per_second": sum(tokens_per_step[warmup:warmup + len(seconds)]) / total,
            "median_step_seconds": statistics.median(seconds)}


def summarise(runs: list[dict], sides: list[str], zero: int) -> dict:
    summary = {}
    for side in sides:
        rs = [r for r in runs if r["side"] == side]
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


def paired_ratios(runs: list[dict], sides: list[str]) -> dict:
    """This project's sides over TRL's, within a repetition (runs next to each other in time), then their spread."""
    by_side = {side: {r["rep"]: r for r in runs if r["side"] == side} for side in sides}
    ratios = {}
    for mine in (s for s in sides if s.startswith("adpo")):
        for theirs in (s for s in sides if s.startswith("trl")):
            a, b = by_side[mine], by_side[theirs]
            reps = sorted(set(a) & set(b))
            ratio = lambda key: spread([a[k][key] / b[k][key] for k in reps])  # noqa: E731
            ratios[f"{mine}/{theirs}"] = {"throughput": ratio("pairs_per_second"),
                                          "peak_training_memory": ratio("peak_span_above_baseline_mib"),
                                          "peak_lifetime_memory": ratio("peak_rss_lifetime_mib")}
    return ratios


def check_goals(ratios: dict) -> list[dict]:
    goals = []
    for mine, theirs, measure, bound in GOALS:
        r = ratios.get(f"{mine}/{theirs}")
        if r is None:
            continue
        value = r[measure]["median"]
        goals.append({"mine": mine, "theirs": theirs, "setting": GOAL_LABELS[(mine, theirs)], "measure": measure,
                      "bound": bound, "ratio": value,
                      "met": value >= bound if measure == "throughput" else value <= bound})
    return goals


def print_check(check: dict) -> None:
    print(f"  adpo {check['ours']['loss']:.7f}  trl-live {check['trl-live']['loss']:.7f}  "
          f"trl-precompute {check['trl-precompute']['loss']:.7f}  (log 2 = {check['log2']:.7f})  "
          f"tokenisation mismatches {check['tokenisation_mismatches']}  "
          f"{'FAIL: ' + '; '.join(check['problems']) if check['problems'] else 'PASS'}", flush=True)


def print_tables(summary: dict, ratios: dict, goals: list[dict], check: dict | None, args, num_pairs: int) -> None:
    print()
    print(f"{'side':20s} {'pairs/s':>22s} {'tokens/s':>24s} {'precompute s':>14s} {'train peak MiB*':>20s} "
          f"{'lifetime peak MiB':>20s}")
    for side, s in summary.items():
        print(f"{side:20s} {fmt(s['pairs_per_second']):>22s} {fmt(s['tokens_per_second'], 0):>24s} "
              f"{s['precompute_seconds']['median']:14.2f} {fmt(s['peak_training_above_imports_mib'], 0):>20s} "
              f"{fmt(s['peak_rss_lifetime_mib'], 0):>20s}")
    print("* peak RSS during the training steps minus RSS after the side's imports; median [min-max] over "
          f"{args.reps} repetitions; precompute over {num_pairs} pairs")
    print()
    for name, r in ratios.items():
        print(f"{name:32s} throughput {fmt(r['throughput'])}x   train-peak memory {fmt(r['peak_training_memory'])}x"
              f"   lifetime-peak memory {fmt(r['peak_lifetime_memory'])}x")
    print()
    for g in goals:
        sign = ">=" if g["measure"] == "throughput" else "<="
        pair = f"{g['mine']}/{g['theirs']}"
        print(f"goal {g['measure']:20s} {pair:28s} {g['ratio']:5.2f}x {sign} {g['bound']}x "
              f"({g['setting']}): {'MET' if g['met'] else 'NOT MET'}")
    if check is not None:
        print(f"first-step loss check (|adpo - trl| <= {LOSS_TOLERANCE}): {'FAIL' if check['problems'] else 'PASS'}")


def main_parent(args) -> None:
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is not installed: pip install -e '.[bench]' (the optional extra 'bench')") from None
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise SystemExit(f"unknown sides {unknown}; choose from {SIDES}")
    environment = print_environment()
    total_steps = args.warmup + args.steps
    num_pairs = total_steps * PAIRS_PER_STEP
    # A kill runs the clean-up below (the workspace) like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="adpo-bench-trl-"))
    try:
        print(f"workspace {work}: {num_pairs} pairs, model {WORKLOAD.layers}x{WORKLOAD.hidden}, "
              f"{args.threads} threads, {args.reps} repetitions of {sides}", flush=True)
        tokens_per_step = build_workspace(work, num_pairs, seed=args.seed)
        check = None
        if not args.skip_check:
            print("check: tokenisation and first-step DPO loss ...", flush=True)
            check = run_side("check", args, work)
            print_check(check)
        runs: list[dict] = []
        for rep in range(args.reps):
            for side in rotated(sides, rep):
                run = summarise_run(run_side(side, args, work), tokens_per_step, args.warmup)
                run.update(side=side, rep=rep)
                runs.append(run)
                print(f"  rep {rep} {side:20s} {run['pairs_per_second']:6.2f} pairs/s  "
                      f"{run['tokens_per_second']:8.0f} tok/s  train peak "
                      f"+{run['peak_span_above_baseline_mib'] or 0:.0f} MiB  "
                      f"(lifetime peak {run['peak_rss_lifetime_mib']:.0f} MiB)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary, ratios = summarise(runs, sides, args.zero), paired_ratios(runs, sides)
    goals = check_goals(ratios)
    print_tables(summary, ratios, goals, check, args, num_pairs)
    path = OUT / "train_vs_trl.json"
    save_json(path, {
        "benchmark": "train_vs_trl",
        "config": {"steps": args.steps, "warmup": args.warmup, "reps": args.reps, "threads": args.threads,
                   "pairs_per_step": PAIRS_PER_STEP, "hidden": WORKLOAD.hidden, "layers": WORKLOAD.layers,
                   "heads": WORKLOAD.heads, "vocab": WORKLOAD.vocab_size,
                   "prompt_tokens": [n + 1 for n in WORKLOAD.prompt_words],
                   "response_tokens": [n + 1 for n in WORKLOAD.response_words], "beta": BETA, "lr": LR,
                   "deepspeed_zero_stage": args.zero, "sides": sides, "dtype": "float32", "device": "cpu",
                   "mean_tokens_per_step": statistics.mean(tokens_per_step)},
        "memory_measure": "peak_training_above_imports_mib = VmHWM over the training steps (reset at training start "
                          "via /proc/self/clear_refs) minus VmRSS after the side's imports; "
                          "peak_rss_lifetime_mib = ru_maxrss of the whole child process; every child runs with "
                          "MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the RSS",
        "environment": environment, "check": check, "summary": summary, "ratios": ratios, "goals": goals,
        "runs": runs,
    })
    print(f"wrote {path}")
    if check is not None and check["problems"]:
        raise SystemExit("the first-step loss check failed: the throughput comparison is not like for like")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first (at least 1)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; sides interleaved within each")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {SIDES}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each side")
    parser.add_argument("--zero", type=int, default=0, choices=(0, 1, 2, 3), help="this project's ZeRO stage")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pairs")
    parser.add_argument("--skip-check", action="store_true", help="skip the tokenisation / first-step loss check")
    # Internal: one side in this (fresh) process.
    parser.add_argument("--side", choices=(*SIDES, "check"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    add_result_argument(parser)
    args = parse_args(parser, QUICK)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the timed span starts at the end of a step)")
    if args.result is None:
        main_parent(args)
        return
    runners = {"adpo": lambda: run_adpo(args, args.work),
               "adpo-gc": lambda: run_adpo(args, args.work, checkpointing=True),
               "adpo-accum": lambda: run_adpo(args, args.work, micro=1),
               "trl-live": lambda: run_trl(args, args.work, precompute=False),
               "trl-precompute": lambda: run_trl(args, args.work, precompute=True),
               "trl-live-nogc": lambda: run_trl(args, args.work, precompute=False, checkpointing=False),
               "trl-precompute-nogc": lambda: run_trl(args, args.work, precompute=True, checkpointing=False),
               "trl-live-accum": lambda: run_trl(args, args.work, precompute=False, micro=1),
               "check": lambda: run_check(args, args.work)}
    write_result(args.result, runners[args.side]())


if __name__ == "__main__":
    main()
