"""Training throughput and peak memory: this project's train step against TRL's DPOTrainer, side by side.

    .venv/bin/python benchmarks/train_vs_trl.py [--steps 16 --reps 3 --warmup 2 --sides adpo,trl-live,...]

Sides (each run in its own fresh subprocess; the parent interleaves them, rotating the order every repetition):
  adpo            this project: the DeepSpeed engine the train stage builds + adpo.training.step.train_step, with the
                  per-token reference log-probs cached first (adpo.training.reference; time reported apart)
  adpo-live       the same step with a reference forward every step instead of the cache (optional variant)
  adpo-gc         adpo with train.gradient_checkpointing=true
  trl-live        TRL DPOTrainer defaults: live reference model, gradient checkpointing on (DPOConfig's default)
  trl-precompute  TRL DPOTrainer with precompute_ref_log_probs=True (time to precompute reported apart)
  trl-*-nogc      the same with gradient_checkpointing=False
  *-accum         the same 8 pairs per optimizer step as 8 micro-batches of 1 pair (gradient accumulation 8), on
                  both sides with their other defaults: the usual way to trade speed for activation memory
Goals are checked like for like (checkpointing on both sides, off on both, accumulation on both), for each side's
defaults, and for accumulation on this side against TRL's defaults.

Both sides: the same random 4-layer, 256-wide Llama (word-level vocabulary of 503), the same pairs in the same order
(prompts ~48 tokens, responses 100-160), 8 pairs per optimizer step, fp32 on CPU, torch.set_num_threads(2).
Before timing, a `check` subprocess verifies that both tokenise every pair identically and that the first training
step computes the same DPO loss (sigmoid, same beta) on the same batch to 1e-5, against a reference model that differs
from the policy (with reference == policy both losses are log 2 whatever the code does).

Throughput = pairs (tokens) of the timed steps / their wall time, between consecutive step ends, after warm-up steps.
Memory: peak RSS during the training steps (VmHWM, reset via /proc/self/clear_refs when training starts) minus the RSS
after the side's imports -- model, optimizer, reference, activations, not the libraries; the absolute whole-process
peak (ru_maxrss) is reported too; glibc's mmap threshold is pinned in every child so that RSS follows live tensors
rather than the allocator's history. Results: a table on stdout and benchmarks/out/train_vs_trl.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
# TRL's DPOConfig turns gradient checkpointing on by default; this project's train config leaves it off. Both settings
# are measured on both sides so that every goal is checked like for like (and project default vs TRL default too).
SIDES = ("adpo", "adpo-gc", "trl-live", "trl-precompute", "trl-live-nogc", "trl-precompute-nogc", "adpo-accum",
         "trl-live-accum", "adpo-live")
DEFAULT_SIDES = SIDES[:8]
DESCRIPTIONS = {
    "adpo": "adpo train_step, DeepSpeed ZeRO-{zero}, cached per-token reference (project default: no checkpointing)",
    "adpo-gc": "adpo train_step, DeepSpeed ZeRO-{zero}, cached reference, train.gradient_checkpointing=true",
    "adpo-accum": "adpo train_step, DeepSpeed ZeRO-{zero}, cached reference, micro-batch 1 x accumulation 8",
    "trl-live-accum": "TRL DPOTrainer defaults (live reference, checkpointing), micro-batch 1 x accumulation 8",
    "adpo-live": "adpo train_step, DeepSpeed ZeRO-{zero}, reference forward every step (optional variant)",
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

# The configuration of the issue (and /work/shared/notes/trl-baseline.md).
VOCAB_WORDS = 499  # + <pad>, <s>, </s>, <unk> = 503
HIDDEN, LAYERS, HEADS = 256, 4, 4
PROMPT_TOKENS = (44, 52)  # words per prompt; + BOS gives ~48 tokens
RESPONSE_TOKENS = (99, 159)  # words per response; + EOS gives 100-160 tokens
PAIRS_PER_STEP = 8
BETA = 0.1
LR = 1e-5
LOSS_TOLERANCE = 1e-5


# ------------------------------------------------------------------------------------------------- measurements --

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM (the kernel's peak RSS) to the current RSS, so that a later read is the peak from here on."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    return _status_kib("VmHWM") / 1024


def lifetime_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _new_packages(before: set[str]) -> list[str]:
    """Top-level packages imported after the memory baseline (their import cost lands in the training figure)."""
    return sorted({name.split(".")[0] for name in set(sys.modules) - before})


class StepClock:
    """Wall-clock stamps at step ends; the timed span runs from the end of the last warm-up step."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.stamps: list[float] = []

    def step_end(self) -> None:
        self.stamps.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        s = self.stamps[self.warmup - 1:] if self.warmup else self.stamps
        return [b - a for a, b in zip(s, s[1:])]


# -------------------------------------------------------------------------------------------------- the workload --

def build_workspace(work: Path, num_pairs: int, seed: int) -> dict:
    """Tokenizer + policy (seed 0) + a different reference model (seed 1, for the loss check) + pairs.jsonl."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from adpo_data_prep.toy.model import build_tiny_llama

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = [f"w{i}" for i in range(VOCAB_WORDS)]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # A BOS on plain prompts, as Llama tokenizers add it.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>")
    policy_dir, reference_dir = work / "policy", work / "reference"
    for path, model_seed in ((policy_dir, 0), (reference_dir, 1)):
        tokenizer.save_pretrained(str(path))
        build_tiny_llama(tokenizer, path, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, seed=model_seed)

    rng = random.Random(seed)
    sentence = lambda lo_hi: " ".join(rng.choice(words) for _ in range(rng.randint(*lo_hi)))  # noqa: E731
    rows = [{"id": f"p{i}", "prompt": sentence(PROMPT_TOKENS) + " ", "chosen": sentence(RESPONSE_TOKENS),
             "rejected": sentence(RESPONSE_TOKENS)} for i in range(num_pairs)]
    pairs_dir = work / "pairs"
    pairs_dir.mkdir(parents=True, exist_ok=True)
    (pairs_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"policy": str(policy_dir), "reference": str(reference_dir), "pairs_dir": str(pairs_dir)}


def pair_token_counts(work: Path) -> list[int]:
    """Non-padding tokens of each pair as both sides feed them: 2 x prompt + chosen + rejected."""
    from adpo.training.loop import load_tokenizer
    from adpo.training.pairs_data import read_pairs, tokenize_pairs

    tokenizer = load_tokenizer(str(work / "policy"))
    pairs = tokenize_pairs(read_pairs(work / "pairs" / "pairs.jsonl"), tokenizer)
    return [p.num_tokens for p in pairs]


def _read_rows(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "pairs" / "pairs.jsonl").read_text().splitlines() if line]


# ------------------------------------------------------------------------------------------ this project's side --

def _adpo_cfg(work: Path, args, total_steps: int, *extra: str, micro: int = PAIRS_PER_STEP):
    """The train stage's own config, composed as `adpo-train` would compose it from these overrides."""
    from adpo.config import compose

    return compose("train", [
        f"paths.root={work / 'runs'}", f"model.name_or_path={work / 'policy'}", f"input_dir={work / 'pairs'}",
        "method=dpo", f"method.beta={BETA}", f"deepspeed=zero{args.zero}", "train=tiny",
        f"train.micro_batch_size={micro}", f"train.gradient_accumulation_steps={PAIRS_PER_STEP // micro}",
        f"train.max_steps={total_steps}", f"train.lr={LR}", "train.lora.enabled=false", "progress=false",
        f"train.reference_batch_size={PAIRS_PER_STEP}", "wandb=disabled", *extra,
    ])


def run_adpo(args, work: Path, live: bool, checkpointing: bool = False, micro: int = PAIRS_PER_STEP) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    # Libraries this side imports lazily later on: their import cost is not training memory.
    import deepspeed  # noqa: F401
    import hydra  # noqa: F401
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    from adpo.training import engine as eng
    from adpo.training.logps import batch_token_logps
    from adpo.training.loop import MetricWindow, load_tokenizer
    from adpo.training.pairs_data import make_batch, read_pairs, tokenize_pairs
    from adpo.training.reference import cache_key, model_fingerprint, reference_logps
    from adpo.training.step import MethodSpec, train_step

    rss_imports, modules = rss_mib(), set(sys.modules)
    total_steps = args.warmup + args.steps
    cfg = _adpo_cfg(work, args, total_steps, f"train.gradient_checkpointing={str(checkpointing).lower()}",
                    micro=micro)
    tcfg, mcfg = cfg.train, cfg.model
    method = MethodSpec.from_cfg(cfg.method)
    tokenizer = load_tokenizer(str(mcfg.name_or_path))
    tokenization = {"prompt_format": str(mcfg.prompt_format), "max_prompt_length": mcfg.get("max_prompt_length"),
                    "max_length": mcfg.get("max_length")}
    pairs_path = work / "pairs" / "pairs.jsonl"
    pairs = tokenize_pairs(read_pairs(pairs_path), tokenizer, **tokenization)[: total_steps * PAIRS_PER_STEP]

    rank, world = eng.init_distributed()
    torch.set_num_threads(args.threads)
    device = eng.device()
    torch.manual_seed(int(tcfg.seed))
    ds_config = eng.deepspeed_config(cfg.deepspeed, tcfg, world)
    load = lambda: eng.load_causal_lm(str(mcfg.name_or_path), dtype=str(mcfg.dtype)).to(device)  # noqa: E731

    precompute_s = 0.0
    ref_model = None
    if live:
        ref_model = load().eval().requires_grad_(False)
        reference = [(torch.zeros(len(p.chosen_ids)), torch.zeros(len(p.rejected_ids))) for p in pairs]
    else:
        # The stage's cache, in a file of this process's own so that no run reuses another's.
        _, meta = cache_key(model=model_fingerprint(str(mcfg.name_or_path)), dtype=str(mcfg.dtype),
                            tokenization=tokenization, pairs_sha256=f"bench-{os.getpid()}")
        cache = work / "cache" / f"adpo-{os.getpid()}.pt"
        started = time.perf_counter()
        reference, _ = reference_logps(pairs, cache_path=cache, meta=meta, load_model=load,
                                       pad_token_id=tokenizer.pad_token_id,
                                       batch_size=int(tcfg.reference_batch_size), device=device)
        precompute_s = time.perf_counter() - started
        cache.unlink(missing_ok=True)

    model = eng.load_causal_lm(str(mcfg.name_or_path), dtype=str(mcfg.dtype))
    if tcfg.get("gradient_checkpointing"):  # as adpo.training.loop does
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    engine = eng.build_engine(model, tcfg, ds_config, total_steps)
    rss_setup = rss_mib()
    reset_ok = reset_peak_rss()

    clock = StepClock(args.warmup)
    window = MetricWindow()
    first_loss = None
    log_every = int(tcfg.log_every)
    for step in range(total_steps):
        started = time.perf_counter()
        batches = []
        for first in range(step * PAIRS_PER_STEP, (step + 1) * PAIRS_PER_STEP, micro):
            idx = range(first, first + micro)
            batch = make_batch([pairs[i] for i in idx], [reference[i] for i in idx], tokenizer.pad_token_id).to(device)
            if ref_model is not None:
                with torch.no_grad():
                    batch.reference_logps = batch_token_logps(ref_model, batch)
            batches.append(batch)
        metrics = train_step(engine, batches, method)
        # As the train loop does: metrics kept as tensors, reduced (one sync) every log_every steps.
        window.add(metrics, time.perf_counter() - started)
        if (step + 1) % log_every == 0 or step + 1 == total_steps:
            window.reduce(world)
        if first_loss is None:
            first_loss = float(metrics["loss"])
        clock.step_end()
    return {"first_loss": first_loss, "precompute_seconds": precompute_s, "step_seconds": clock.step_seconds(),
            "rss_after_imports_mib": rss_imports, "rss_before_training_mib": rss_setup,
            "peak_rss_training_mib": peak_rss_mib() if reset_ok else None, "peak_rss_lifetime_mib": lifetime_peak_rss_mib(),
            "threads": torch.get_num_threads(), "zero_stage": eng.zero_stage(ds_config),
            "imported_after_baseline": _new_packages(modules), "gradient_checkpointing": bool(checkpointing),
            "optimizer": type(engine.optimizer).__name__}


# ----------------------------------------------------------------------------------------------------- TRL side --

def _trl_args(out_dir: Path, args, total_steps: int, precompute: bool, micro: int = PAIRS_PER_STEP, **extra):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, report_to=[], disable_tqdm=True, save_strategy="no",
        per_device_train_batch_size=micro, gradient_accumulation_steps=PAIRS_PER_STEP // micro, max_steps=total_steps,
        learning_rate=LR, beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=PAIRS_PER_STEP, train_sampling_strategy="sequential", dataloader_num_workers=0,
        max_length=None, model_init_kwargs={"dtype": "float32"}, seed=0, **extra,
    )


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

    rss_imports, modules = rss_mib(), set(sys.modules)
    total_steps = args.warmup + args.steps
    tokenizer = AutoTokenizer.from_pretrained(str(work / "policy"))
    rows = _read_rows(work)[: total_steps * PAIRS_PER_STEP]
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])

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
    state = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, *_, **__):
            state["rss_setup"] = rss_mib()
            state["reset_ok"] = reset_peak_rss()
            state["threads"] = torch.get_num_threads()

        def on_step_end(self, *_, **__):
            clock.step_end()

    extra = {} if checkpointing is None else {"gradient_checkpointing": checkpointing}
    trainer = DPOTrainer(model=str(work / "policy"), args=_trl_args(work / f"trl-{os.getpid()}", args, total_steps,
                                                                     precompute, micro, **extra),
                         train_dataset=dataset, processing_class=tokenizer, callbacks=[Probe()])
    losses = []
    compute_loss = trainer.compute_loss

    def recording_compute_loss(*a, **kw):
        out = compute_loss(*a, **kw)
        if not losses:
            losses.append(float((out[0] if isinstance(out, tuple) else out).detach()))
        return out

    trainer.compute_loss = recording_compute_loss
    trainer.train()
    return {"first_loss": losses[0], "precompute_seconds": timings["precompute_seconds"],
            "step_seconds": clock.step_seconds(), "rss_after_imports_mib": rss_imports,
            "rss_before_training_mib": state["rss_setup"],
            "peak_rss_training_mib": peak_rss_mib() if state["reset_ok"] else None,
            "peak_rss_lifetime_mib": lifetime_peak_rss_mib(), "threads": state["threads"],
            "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer).__name__,
            "ref_model_loaded": trainer.ref_model is not None, "imported_after_baseline": _new_packages(modules),
            "gradient_checkpointing": bool(trainer.args.gradient_checkpointing)}


# --------------------------------------------------------------------------------------------------- the check --

def run_check(args, work: Path) -> dict:
    """Same tokens on both sides, and the same first-step DPO loss against a reference that differs from the policy."""
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    from adpo.training import engine as eng
    from adpo.training.loop import load_tokenizer
    from adpo.training.pairs_data import make_batch, read_pairs, tokenize_pairs
    from adpo.training.reference import compute_reference_logps
    from adpo.training.step import MethodSpec, train_step

    total_steps = args.warmup + args.steps
    cfg = _adpo_cfg(work, args, 1)
    tokenizer = load_tokenizer(str(work / "policy"))
    pairs = tokenize_pairs(read_pairs(work / "pairs" / "pairs.jsonl"), tokenizer, prompt_format="plain",
                           max_prompt_length=cfg.model.max_prompt_length, max_length=cfg.model.max_length)
    pairs = pairs[: total_steps * PAIRS_PER_STEP]
    first = pairs[:PAIRS_PER_STEP]

    # This project: the reference cache's values from the other model, then the real first step on a real engine.
    rank, world = eng.init_distributed()
    torch.set_num_threads(args.threads)
    ref_model = eng.load_causal_lm(str(work / "reference"), dtype="float32")
    reference = compute_reference_logps(ref_model, first, pad_token_id=tokenizer.pad_token_id,
                                        batch_size=PAIRS_PER_STEP, device="cpu")
    engine = eng.build_engine(eng.load_causal_lm(str(work / "policy"), dtype="float32"), cfg.train,
                              eng.deepspeed_config(cfg.deepspeed, cfg.train, world), 1)
    metrics = train_step(engine, [make_batch(first, reference, tokenizer.pad_token_id)],
                         MethodSpec.from_cfg(cfg.method))
    adpo_loss = float(metrics["loss"])

    rows = _read_rows(work)[: total_steps * PAIRS_PER_STEP]
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    out: dict = {"adpo_loss": adpo_loss}
    for name, precompute in (("trl-live", False), ("trl-precompute", True)):
        reference_model = AutoModelForCausalLM.from_pretrained(str(work / "reference"), dtype=torch.float32)
        trainer = DPOTrainer(model=str(work / "policy"), ref_model=reference_model,
                             args=_trl_args(work / f"check-{name}", args, 1, precompute),
                             train_dataset=dataset, processing_class=tokenizer)
        if name == "trl-live":
            ds = trainer.train_dataset
            mismatched = [i for i, p in enumerate(pairs)
                          if (ds[i]["prompt_ids"], ds[i]["chosen_ids"], ds[i]["rejected_ids"])
                          != (p.prompt_ids, p.chosen_ids, p.rejected_ids)]
            out["tokenisation_mismatches"] = len(mismatched)
            out["tokenisation_first_mismatch"] = mismatched[0] if mismatched else None
        losses = []
        compute_loss = trainer.compute_loss
        trainer.compute_loss = lambda *a, _f=compute_loss, **kw: losses.append(_f(*a, **kw)) or losses[-1]
        trainer.train()
        loss = losses[0][0] if isinstance(losses[0], tuple) else losses[0]
        out[f"{name}_loss"] = float(loss.detach())
        out[f"{name}_abs_diff"] = abs(out[f"{name}_loss"] - adpo_loss)
    out["log2"] = float(torch.log(torch.tensor(2.0)))
    out["passed"] = (out["tokenisation_mismatches"] == 0
                     and all(out[f"{n}_abs_diff"] <= LOSS_TOLERANCE for n in ("trl-live", "trl-precompute")))
    return out


# ------------------------------------------------------------------------------------------------------ parent --

def child_env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DS_ACCELERATOR="cpu",
               WANDB_MODE="disabled", WANDB_SILENT="true", TQDM_DISABLE="1", PYTHONUNBUFFERED="1",
               ACCELERATE_USE_CPU="true",
               # glibc adapts its mmap threshold upwards as large blocks are freed, after which freed tensors stay in
               # the heap and RSS measures the allocator's history more than live memory; pinned, both sides' RSS
               # follows their live tensors.
               MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
    return env


def run_child(side: str, args, work: Path) -> dict:
    result = work / f"result-{side}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--work", str(work), "--result",
           str(result), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--zero", str(args.zero)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(args.threads), capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"side {side!r} failed (exit {proc.returncode}); its output is above")
    data = json.loads(result.read_text())
    data["wall_seconds"] = time.perf_counter() - started
    return data


def summarise_run(run: dict, tokens_per_step: list[int], warmup: int) -> dict:
    seconds = run["step_seconds"]
    timed_tokens = sum(tokens_per_step[warmup:warmup + len(seconds)])
    total = sum(seconds)
    mem = run.get("peak_rss_training_mib")
    return {**run,
            "pairs_per_second": PAIRS_PER_STEP * len(seconds) / total,
            "tokens_per_second": timed_tokens / total,
            "median_step_seconds": statistics.median(seconds),
            "peak_training_above_imports_mib": None if mem is None else mem - run["rss_after_imports_mib"]}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for pkg in ("torch", "transformers", "deepspeed", "trl", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def fmt(s: dict, digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def main_parent(args) -> None:
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is not installed: pip install -e '.[bench]' (the optional extra 'bench')") from None
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise SystemExit(f"unknown sides {unknown}; choose from {SIDES}")
    total_steps = args.warmup + args.steps
    # A kill runs the clean-up below (the workspace) like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="adpo-bench-trl-"))
    try:
        print(f"workspace {work}: {total_steps * PAIRS_PER_STEP} pairs, model {LAYERS}x{HIDDEN}, "
              f"{args.threads} threads, {args.reps} repetitions of {sides}", flush=True)
        build_workspace(work, total_steps * PAIRS_PER_STEP, seed=args.seed)
        counts = pair_token_counts(work)
        tokens_per_step = [sum(counts[i:i + PAIRS_PER_STEP]) for i in range(0, len(counts), PAIRS_PER_STEP)]

        check = None
        if not args.skip_check:
            print("check: tokenisation and first-step DPO loss ...", flush=True)
            check = run_child("check", args, work)
            print(f"  adpo {check['adpo_loss']:.7f}  trl-live {check['trl-live_loss']:.7f}  "
                  f"trl-precompute {check['trl-precompute_loss']:.7f}  (log 2 = {check['log2']:.7f})  "
                  f"tokenisation mismatches {check['tokenisation_mismatches']}  "
                  f"{'PASS' if check['passed'] else 'FAIL'}", flush=True)

        runs: list[dict] = []
        for rep in range(args.reps):
            order = sides[rep % len(sides):] + sides[: rep % len(sides)]  # rotate: no side always runs first
            for side in order:
                run = summarise_run(run_child(side, args, work), tokens_per_step, args.warmup)
                run.update(side=side, rep=rep)
                runs.append(run)
                print(f"  rep {rep} {side:20s} {run['pairs_per_second']:6.2f} pairs/s  "
                      f"{run['tokens_per_second']:8.0f} tok/s  train peak +{run['peak_training_above_imports_mib'] or 0:.0f}"
                      f" MiB  (lifetime peak {run['peak_rss_lifetime_mib']:.0f} MiB)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for side in sides:
        rs = [r for r in runs if r["side"] == side]
        summary[side] = {
            "description": DESCRIPTIONS[side].format(zero=args.zero),
            "pairs_per_second": spread([r["pairs_per_second"] for r in rs]),
            "tokens_per_second": spread([r["tokens_per_second"] for r in rs]),
            "precompute_seconds": spread([r["precompute_seconds"] for r in rs]),
            "peak_training_above_imports_mib": spread([r["peak_training_above_imports_mib"] or 0.0 for r in rs]),
            "peak_rss_lifetime_mib": spread([r["peak_rss_lifetime_mib"] for r in rs]),
            "rss_after_imports_mib": spread([r["rss_after_imports_mib"] for r in rs]),
            "first_loss": spread([r["first_loss"] for r in rs]),
        }
    # Ratios within a repetition (runs next to each other in time), then their median and range.
    by_side = {side: {r["rep"]: r for r in runs if r["side"] == side} for side in sides}
    ratios = {}
    for mine in (s for s in sides if s.startswith("adpo")):
        for theirs in (s for s in sides if s.startswith("trl")):
            a, b = by_side[mine], by_side[theirs]
            reps = sorted(set(a) & set(b))
            ratio = lambda key: spread([a[k][key] / b[k][key] for k in reps])  # noqa: E731
            ratios[f"{mine}/{theirs}"] = {"throughput": ratio("pairs_per_second"),
                                          "peak_training_memory": ratio("peak_training_above_imports_mib"),
                                          "peak_lifetime_memory": ratio("peak_rss_lifetime_mib")}
    goals = []
    for mine, theirs, measure, bound in GOALS:
        r = ratios.get(f"{mine}/{theirs}")
        if r is None:
            continue
        value = r[measure]["median"]
        goals.append({"mine": mine, "theirs": theirs, "setting": GOAL_LABELS[(mine, theirs)], "measure": measure,
                      "bound": bound, "ratio": value,
                      "met": value >= bound if measure == "throughput" else value <= bound})

    print()
    print(f"{'side':20s} {'pairs/s':>22s} {'tokens/s':>24s} {'precompute s':>14s} {'train peak MiB*':>20s} "
          f"{'lifetime peak MiB':>20s}")
    for side, s in summary.items():
        print(f"{side:20s} {fmt(s['pairs_per_second']):>22s} {fmt(s['tokens_per_second'], 0):>24s} "
              f"{s['precompute_seconds']['median']:14.2f} {fmt(s['peak_training_above_imports_mib'], 0):>20s} "
              f"{fmt(s['peak_rss_lifetime_mib'], 0):>20s}")
    print("* peak RSS during the training steps minus RSS after the side's imports; median [min-max] over "
          f"{args.reps} repetitions; precompute over {total_steps * PAIRS_PER_STEP} pairs")
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
        print(f"first-step loss check (|adpo - trl| <= {LOSS_TOLERANCE}): {'PASS' if check['passed'] else 'FAIL'}")

    OUT.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "train_vs_trl",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {"steps": args.steps, "warmup": args.warmup, "reps": args.reps, "threads": args.threads,
                   "pairs_per_step": PAIRS_PER_STEP, "hidden": HIDDEN, "layers": LAYERS, "heads": HEADS,
                   "vocab": VOCAB_WORDS + 4, "prompt_tokens": [PROMPT_TOKENS[0] + 1, PROMPT_TOKENS[1] + 1],
                   "response_tokens": [RESPONSE_TOKENS[0] + 1, RESPONSE_TOKENS[1] + 1], "beta": BETA, "lr": LR,
                   "deepspeed_zero_stage": args.zero, "sides": sides, "dtype": "float32", "device": "cpu",
                   "mean_tokens_per_step": statistics.mean(tokens_per_step)},
        "memory_measure": "peak_training_above_imports_mib = VmHWM over the training steps (reset at training start "
                          "via /proc/self/clear_refs) minus VmRSS after the side's imports; "
                          "peak_rss_lifetime_mib = ru_maxrss of the whole child process; every child runs with "
                          "MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the RSS",
        "versions": versions(),
        "check": check,
        "summary": summary,
        "ratios": ratios,
        "goals": goals,
        "runs": runs,
    }
    path = OUT / "train_vs_trl.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    if check is not None and not check["passed"]:
        raise SystemExit("the first-step loss check failed: the throughput comparison is not like for like")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; sides interleaved within each")
    parser.add_argument("--sides", default=",".join(DEFAULT_SIDES), help=f"comma-separated, from {SIDES}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each side")
    parser.add_argument("--zero", type=int, default=0, choices=(0, 1, 2, 3), help="this project's ZeRO stage")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pairs")
    parser.add_argument("--skip-check", action="store_true", help="skip the tokenisation / first-step loss check")
    # Internal: one side in this (fresh) process.
    parser.add_argument("--side", choices=(*SIDES, "check"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the timed span starts at the end of a step)")
    if args.side is None:
        main_parent(args)
        return
    runners = {"adpo": lambda: run_adpo(args, args.work, live=False),
               "adpo-live": lambda: run_adpo(args, args.work, live=True),
               "adpo-gc": lambda: run_adpo(args, args.work, live=False, checkpointing=True),
               "trl-live": lambda: run_trl(args, args.work, precompute=False),
               "trl-precompute": lambda: run_trl(args, args.work, precompute=True),
               "trl-live-nogc": lambda: run_trl(args, args.work, precompute=False, checkpointing=False),
               "trl-precompute-nogc": lambda: run_trl(args, args.work, precompute=True, checkpointing=False),
               "adpo-accum": lambda: run_adpo(args, args.work, live=False, micro=1),
               "trl-live-accum": lambda: run_trl(args, args.work, precompute=False, micro=1),
               "check": lambda: run_check(args, args.work)}
    args.result.write_text(json.dumps(runners[args.side]()))


if __name__ == "__main__":
    main()
