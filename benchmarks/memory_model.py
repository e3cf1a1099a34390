"""Peak memory of each stage as a small linear model, fitted on CPU measurements of the stages' own code paths, checked
on held-out sizes, and turned into per-GPU predictions for the four paper models.

    .venv/bin/python benchmarks/memory_model.py [--only N] [--quick]

Every size (hidden, layers, MLP width, heads, vocabulary, sequence length, sequences per forward, log-prob chunk) is
measured in two fresh subprocesses (harness.run_child, glibc's mmap threshold pinned so RSS follows live tensors), fp32,
on a random Llama with a word-level tokenizer (synthetic.py; one token per word, so lengths are exact):
  train child    adpo.training.loop.setup_training (train=default: LoRA r=16 on q,k,v,o,gate,up,down; DeepSpeed
                 ZeRO-2) then two adpo.training.step.train_step calls: stage "train"; its reference pass
                 (adpo.training.reference.compute_reference_logps, via reference_logps, measured from the moment the
                 reference model is loaded): stage "reference". Micro-batch = sequences / 2 pairs, reference batch the
                 same.
  weights child  the weights stage's work: the positive and negative LoRA adapters (criticality.lora of
                 conf/weights.yaml) trained by lora_finetune.train_adapter (one optimizer step each): stage "sft"; then
                 criticality.score_responses under both adapters: stage "score".
A stage's figure is the peak RSS during its span minus the RSS after the imports (harness.MemoryProbe): the model's
weights, optimizer states, activations, logits chunks (the model is loaded before the span starts).

The model per stage (least squares, numpy; a feature whose coefficient comes out negative is dropped and the fit
redone), features in elements (bytes for the state term):
  state    model state bytes: 4 x frozen parameters + 16 x trainable LoRA parameters (weight, grad, Adam m and v, fp32)
           for the training stages, 4 x parameters (+ adapters) for the no-grad ones
  act_h    sequences x seq x layers x hidden        (per-layer activations proportional to the hidden size)
  act_i    sequences x seq x layers x intermediate  (the MLP's)
           no-grad stages (reference, score) hold one layer's activations at a time: the same without x layers
  logits   min(chunk, response positions) x vocab   (one chunk of logits and its softmax/gradient)
  attn     sequences x heads x seq^2 x layers (no-grad: without x layers): attention probabilities, if the CPU
           attention kernel materialises them; GPU flash/sdpa kernels do not
  const    intercept (allocator and Python objects on CPU)
Results: results/memory_model/{measurements.csv, fit.json, fit.md, predictions.md}; the last line of stdout is one
JSON object.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import (MemoryProbe, add_result_argument, parse_args, print_environment, run_child,  # noqa: E402
                     write_result)

ROOT = HERE.parent
OUT = ROOT / "results" / "memory_model"
CHILD_ENV = {"DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": "true"}
MIB = 1024 ** 2
GIB = 1024 ** 3
STAGES = ("train", "reference", "sft", "score")
FEATURES = ("state", "act_h", "act_i", "logits", "attn", "const")

# (hidden, layers, intermediate/hidden, heads, vocab, seq, sequences per forward, chunk); the last are held out.
POINTS = [
    dict(hidden=256, layers=4, ratio=2.0, heads=4, vocab=16384, seq=256, seqs=4, chunk=256),
    dict(hidden=512, layers=4, ratio=2.0, heads=8, vocab=16384, seq=256, seqs=4, chunk=256),
    dict(hidden=256, layers=8, ratio=3.5, heads=4, vocab=16384, seq=256, seqs=4, chunk=256),
    dict(hidden=256, layers=4, ratio=2.0, heads=4, vocab=65536, seq=256, seqs=4, chunk=256),
    dict(hidden=256, layers=4, ratio=2.0, heads=4, vocab=4096, seq=256, seqs=4, chunk=256),
    dict(hidden=256, layers=4, ratio=2.0, heads=4, vocab=16384, seq=768, seqs=4, chunk=256),
    dict(hidden=256, layers=4, ratio=2.0, heads=4, vocab=16384, seq=256, seqs=8, chunk=256),
    dict(hidden=384, layers=6, ratio=3.5, heads=6, vocab=32768, seq=512, seqs=4, chunk=256),
    dict(hidden=128, layers=2, ratio=4.0, heads=2, vocab=32768, seq=1024, seqs=2, chunk=256),
    dict(hidden=256, layers=4, ratio=2.0, heads=4, vocab=32768, seq=256, seqs=4, chunk=64),
    dict(hidden=512, layers=2, ratio=3.0, heads=8, vocab=65536, seq=512, seqs=2, chunk=512),
    dict(hidden=128, layers=4, ratio=2.0, heads=2, vocab=131072, seq=256, seqs=4, chunk=256),
    dict(hidden=640, layers=4, ratio=3.5, heads=10, vocab=49152, seq=512, seqs=4, chunk=256, held_out=True),
    dict(hidden=192, layers=6, ratio=3.0, heads=3, vocab=24576, seq=640, seqs=6, chunk=128, held_out=True),
]
QUICK = {"only": 1}

# The paper's models: parameters (hub totals), vocabulary, hidden, layers, intermediate, attention and KV heads, head
# size (conf/model/*.yaml, data_prep/adpo_data_prep/tiny_paper_models.py HUB_FEATURES).
PAPER_MODELS = {
    "Llama-3-8B": dict(params=8.03e9, vocab=128256, hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8,
                       head_dim=128),
    "Qwen3-8B-Base": dict(params=8.19e9, vocab=151936, hidden=4096, layers=36, intermediate=12288, heads=32,
                          kv_heads=8, head_dim=128),
    "DeepSeek-Math-7B": dict(params=6.91e9, vocab=102400, hidden=4096, layers=30, intermediate=11008, heads=32,
                             kv_heads=32, head_dim=128),
    "Gemma-3-12B": dict(params=12.2e9, vocab=262208, hidden=3840, layers=48, intermediate=15360, heads=16, kv_heads=8,
                        head_dim=256),
}
# The paper's settings per stage (conf/train/default.yaml, conf/weights.yaml, conf/model/*.yaml).
PAPER = dict(max_length=1024, prompt_share=0.25, train_pairs=2, reference_pairs=8, sft_batch=8, score_batch=8,
             chunk=256, train_lora=dict(r=16, modules=("q", "k", "v", "o", "gate", "up", "down")),
             weights_lora=dict(r=8, modules=("gate", "up", "down")))
# CPU fp32 -> GPU bf16: bytes per element on GPU over CPU's, per feature (state is converted in its own formula).
GPU_SCALE = {"act_h": 0.5, "act_i": 0.5, "logits": 1.0, "attn": 0.0, "const": 0.0}
ZERO2_BUCKET_GIB = 5e8 * 2 / GIB  # DeepSpeed ZeRO-2's contiguous gradient bucket: reduce_bucket_size bf16 elements
CUDA_CONTEXT_GIB = 1.0  # CUDA context, cuBLAS workspace, allocator slack: an assumption, not measured


# ------------------------------------------------------------------------------------------------- workloads --

def lengths(p: dict) -> tuple[int, int]:
    prompt = max(2, p["seq"] // 4)
    return prompt, p["seq"] - prompt


def intermediate(p: dict) -> int:
    return int(round(p["ratio"] * p["hidden"] / 8)) * 8


def build(p: dict, work: Path, num_pairs: int):
    """A random Llama of the point's shape (tied embeddings) with its word-level tokenizer, and pairs.jsonl whose
    prompts are exactly prompt tokens (BOS + words) and responses exactly response tokens (words + EOS)."""
    from adpo_data_prep.toy.model import build_tiny_llama
    from synthetic import Workload, word_tokenizer, write_pairs

    prompt, response = lengths(p)
    workload = Workload(vocab_size=p["vocab"], hidden=p["hidden"], layers=p["layers"], heads=p["heads"],
                        prompt_words=(prompt - 1,) * 2, response_words=(response - 1,) * 2)
    tokenizer = word_tokenizer(workload.words)
    tokenizer.save_pretrained(str(work / "model"))
    build_tiny_llama(tokenizer, work / "model", hidden_size=p["hidden"], num_layers=p["layers"],
                     num_heads=p["heads"], intermediate_size=intermediate(p),
                     max_position_embeddings=max(1024, p["seq"]), seed=0)
    rows = write_pairs(workload, work / "pairs" / "pairs.jsonl", num_pairs, seed=0)
    gc.collect()
    return tokenizer, rows


def count_params(model) -> tuple[int, int]:
    trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
    return sum(t.numel() for t in model.parameters()) - trainable, trainable


# ---------------------------------------------------------------------------------------------------- children --

def child_train(p: dict, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import deepspeed  # noqa: F401
    import hydra  # noqa: F401
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import adpo.training.loop as loop
    from adpo.config import compose
    from adpo.training.step import train_step

    pairs_per_batch = p["seqs"] // 2
    steps = 2
    with tempfile.TemporaryDirectory(prefix="adpo-memmodel-") as tmp:
        work = Path(tmp)
        build(p, work, pairs_per_batch * steps)
        memory = MemoryProbe()
        spans: dict = {}
        original = loop.reference_logps

        def measured_reference(*a, load_model, **kw):
            def load():
                model = load_model()
                spans["reference_params"] = count_params(model)
                memory.start()
                return model

            out = original(*a, load_model=load, **kw)
            spans["reference"] = memory.report()
            return out

        loop.reference_logps = measured_reference
        prompt, _ = lengths(p)
        cfg = compose("train", [
            f"paths.root={work / 'runs'}", f"model.name_or_path={work / 'model'}", f"input_dir={work / 'pairs'}",
            "method=dpo", "deepspeed=zero2", "train=default", f"train.micro_batch_size={pairs_per_batch}",
            "train.gradient_accumulation_steps=1", f"train.max_steps={steps}", "train.lr=1e-5",
            f"train.reference_batch_size={pairs_per_batch}", f"train.logps_chunk_size={p['chunk']}",
            f"model.max_prompt_length={prompt}", f"model.max_length={p['seq']}", "model.dtype=float32",
            f"train.reference_cache_dir={work / 'cache'}", "wandb=disabled", "progress=false",
        ])
        setup = loop.setup_training(cfg)
        frozen, trainable = count_params(setup.engine.module)
        lengths_seen = [int(b.attention_mask.shape[1]) for b in setup.micro_batches(0)]
        gc.collect()
        memory.start()
        for step in range(steps):
            train_step(setup.engine, setup.micro_batches(step), setup.method,
                       logps_chunk_size=setup.logps_chunk_size)
        spans["train"] = memory.report()
    return {"spans": spans, "frozen": frozen, "trainable": trainable, "ref_params": spans.pop("reference_params"),
            "batch_lengths": lengths_seen, "zero_stage": setup.ds_config["zero_optimization"]["stage"],
            "attn_implementation": setup.engine.module.config._attn_implementation}


def child_weights(p: dict, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from omegaconf import OmegaConf

    from adpo.data.tokenize import encode_pair
    from adpo.models import load_causal_lm, lora_config
    from adpo_data_prep.criticality import score_responses
    from adpo_data_prep.lora_finetune import SFTConfig, add_adapter, train_adapter

    crit = OmegaConf.load(ROOT / "conf" / "weights.yaml").criticality
    with tempfile.TemporaryDirectory(prefix="adpo-memmodel-") as tmp:
        work = Path(tmp)
        tokenizer, rows = build(p, work, p["seqs"])
        prompt, _ = lengths(p)
        examples = [encode_pair(tokenizer, r["prompt"], r["chosen"], max_prompt_length=prompt, max_length=p["seq"])
                    for r in rows]
        model = load_causal_lm(str(work / "model"), dtype="float32", device="cpu")
        gc.collect()
        memory = MemoryProbe()  # after the model: its weights are added below, as the parameter count says
        weights_mib = sum(t.numel() * t.element_size() for t in model.parameters()) / MIB
        lora = lora_config(crit.lora, model)
        sft = SFTConfig(**{**OmegaConf.to_container(crit.sft, resolve=True), "batch_size": p["seqs"],
                           "grad_accum": 1}, logps_chunk_size=p["chunk"])
        pad = tokenizer.pad_token_id
        memory.start()
        for i, name in enumerate(("positive", "negative")):
            torch.manual_seed(i)
            model = add_adapter(model, name, lora)
            train_adapter(model, name, examples, sft, pad_id=pad)
        spans = {"sft": memory.report()}
        frozen, trainable = count_params(model)
        adapter = sum(t.numel() for n, t in model.named_parameters() if "lora_" in n)
        gc.collect()
        memory.start()
        score_responses(model, examples, pad_id=pad, lam=float(crit.lam), batch_size=p["seqs"],
                        chunk_size=p["chunk"])
        spans["score"] = memory.report()
    for s in spans.values():  # the weights were resident before the probe's baseline
        s["peak_span_above_baseline_mib"] += weights_mib
    return {"spans": spans, "params": frozen + trainable - adapter, "adapter": adapter, "weights_mib": weights_mib,
            "lora_r": int(crit.lora.r), "attn_implementation": model.config._attn_implementation}


# ------------------------------------------------------------------------------------------------- features --

def features(stage: str, *, frozen: float, trainable: float, hidden: int, layers: int, inter: int, heads: int,
             vocab: int, seq: int, seqs: int, chunk: int, resp_positions: int, state_bytes: float | None = None) -> dict:
    grad = stage in ("train", "sft")
    depth = layers if grad else 1
    logit_rows = min(chunk, resp_positions)
    if state_bytes is None:
        state_bytes = 4 * frozen + (16 if grad else 4) * trainable
    return {"state": state_bytes, "act_h": seqs * seq * depth * hidden, "act_i": seqs * seq * depth * inter,
            "logits": logit_rows * vocab, "attn": seqs * heads * seq ** 2 * depth, "const": 1.0}


def measurement_rows(p: dict, train: dict, weights: dict) -> list[dict]:
    prompt, response = lengths(p)
    common = dict(hidden=p["hidden"], layers=p["layers"], inter=intermediate(p), heads=p["heads"], vocab=p["vocab"],
                  seq=p["seq"], seqs=p["seqs"], chunk=p["chunk"], resp_positions=p["seqs"] * response)
    rows = []
    for stage, frozen, trainable, src in (
            ("train", train["frozen"], train["trainable"], train),
            ("reference", sum(train["ref_params"]), 0, train),
            ("sft", weights["params"], weights["adapter"], weights),
            ("score", weights["params"], weights["adapter"], weights)):
        f = features(stage, frozen=frozen, trainable=trainable, **common)
        rows.append({"stage": stage, "held_out": bool(p.get("held_out")), **{k: p[k] for k in
                     ("hidden", "layers", "heads", "vocab", "seq", "seqs", "chunk")}, "intermediate": common["inter"],
                     "frozen_params": frozen, "trainable_params": trainable,
                     "peak_mib": round(src["spans"][stage]["peak_span_above_baseline_mib"], 1),
                     **{f"f_{k}": v for k, v in f.items()}})
    return rows


# ------------------------------------------------------------------------------------------------------ fit --

def fit_stage(rows: list[dict], free_state: bool = False) -> dict:
    """Least squares of peak bytes on the features. By default the state term's coefficient is fixed at 1 (the
    weights and optimizer states are resident exactly once: a free fit of the reference pass finds 1.01) and the
    other terms are fitted to what remains; free_state fits it too (reported as a check: across this grid the state
    term is nearly collinear with the activation and logits terms, and a free fit trades one for another)."""
    import numpy as np

    fit_rows = [r for r in rows if not r["held_out"]]
    fixed = [] if free_state else ["state"]
    y = np.array([r["peak_mib"] * MIB - sum(float(r[f"f_{k}"]) for k in fixed) for r in fit_rows])
    used = [k for k in FEATURES if k not in fixed]
    while True:
        x = np.array([[float(r[f"f_{k}"]) for k in used] for r in fit_rows])
        scale = np.abs(x).max(axis=0)
        scale[scale == 0] = 1
        coef = np.linalg.lstsq(x / scale, y, rcond=None)[0] / scale
        negative = [k for k, c in zip(used, coef) if c < 0 and k != "const"]
        if not negative:
            break
        used.remove(min(negative, key=lambda k: coef[used.index(k)] * scale[used.index(k)]))
    coefs = {k: 1.0 if k in fixed else float(coef[used.index(k)]) if k in used else 0.0 for k in FEATURES}

    def predict(r):
        return sum(coefs[k] * float(r[f"f_{k}"]) for k in FEATURES) / MIB

    def errors(rs):
        rel = [(predict(r) - r["peak_mib"]) / r["peak_mib"] for r in rs]
        return {"n": len(rs), "max_abs_rel": max(map(abs, rel)) if rel else None,
                "rms_rel": math.sqrt(sum(e * e for e in rel) / len(rel)) if rel else None,
                "max_abs_mib": max(abs(predict(r) - r["peak_mib"]) for r in rs) if rs else None}

    held = [r for r in rows if r["held_out"]]
    return {"coefficients": coefs, "state_fixed": not free_state,
            "dropped": [k for k in FEATURES if k not in used and k not in fixed], "fit": errors(fit_rows),
            "held_out": errors(held),
            "held_out_points": [{"measured_mib": r["peak_mib"], "predicted_mib": round(predict(r), 1),
                                 "rel_error": (predict(r) - r["peak_mib"]) / r["peak_mib"],
                                 **{k: r[k] for k in ("hidden", "layers", "vocab", "seq", "seqs", "chunk")}}
                                for r in held]}


def read_measurements() -> list[dict]:
    with open(OUT / "measurements.csv") as fh:
        return [{**r, "held_out": r["held_out"] == "True", "peak_mib": float(r["peak_mib"])} for r in csv.DictReader(fh)]


# ------------------------------------------------------------------------------------------------ GPU terms --

def lora_params(m: dict, r: int, modules) -> int:
    q_out, kv_out = m["heads"] * m["head_dim"], m["kv_heads"] * m["head_dim"]
    shapes = {"q": (m["hidden"], q_out), "k": (m["hidden"], kv_out), "v": (m["hidden"], kv_out),
              "o": (q_out, m["hidden"]), "gate": (m["hidden"], m["intermediate"]),
              "up": (m["hidden"], m["intermediate"]), "down": (m["intermediate"], m["hidden"])}
    return m["layers"] * sum(r * (shapes[k][0] + shapes[k][1]) for k in modules)


def gpu_predictions(fits: dict) -> dict:
    seq = PAPER["max_length"]
    response = seq - int(seq * PAPER["prompt_share"])
    out = {}
    for name, m in PAPER_MODELS.items():
        lora_t = lora_params(m, PAPER["train_lora"]["r"], PAPER["train_lora"]["modules"])
        lora_w = 2 * lora_params(m, PAPER["weights_lora"]["r"], PAPER["weights_lora"]["modules"])
        frozen = m["params"]
        stages = {
            # bf16 frozen weights; LoRA: bf16 weight + bf16 grad + fp32 master + Adam m, v (one rank: ZeRO-2
            # partitions the 12 fp32 bytes over ranks, which barely matters at LoRA sizes)
            "train": (2 * PAPER["train_pairs"], 2 * frozen + 16 * lora_t),
            "reference": (2 * PAPER["reference_pairs"], 2 * frozen),
            # peft keeps adapters in fp32: weight + grad + Adam (one adapter trains at a time; the other's weights)
            "sft": (PAPER["sft_batch"], 2 * frozen + 16 * lora_w / 2 + 4 * lora_w / 2),
            "score": (PAPER["score_batch"], 2 * frozen + 4 * lora_w),
        }
        out[name] = {}
        for stage, (seqs, state) in stages.items():
            f = features(stage, frozen=frozen, trainable=0, hidden=m["hidden"], layers=m["layers"],
                         inter=m["intermediate"], heads=m["heads"], vocab=m["vocab"], seq=seq, seqs=seqs,
                         chunk=PAPER["chunk"], resp_positions=seqs * response, state_bytes=state)
            c = fits[stage]["coefficients"]
            terms = {"state": c["state"] * f["state"] / GIB}
            terms.update({k: c[k] * GPU_SCALE[k] * f[k] / GIB for k in ("act_h", "act_i", "logits", "attn", "const")})
            terms["zero2_bucket"] = ZERO2_BUCKET_GIB if stage == "train" else 0.0
            terms["cuda_context"] = CUDA_CONTEXT_GIB
            terms["cpu_attn_if_materialised"] = c["attn"] * 0.5 * f["attn"] / GIB
            out[name][stage] = {"sequences": seqs, "total_gib": sum(v for k, v in terms.items()
                                                                     if k != "cpu_attn_if_materialised"),
                                "terms_gib": terms}
    return out


# --------------------------------------------------------------------------------------------------- output --

def write_outputs(rows: list[dict], fits: dict, free: dict, preds: dict, env: dict, seconds: float) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "measurements.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (OUT / "fit.json").write_text(json.dumps({"stages": fits, "free_state_check": free, "features": FEATURES, "gpu_scale": GPU_SCALE,
                                              "environment": env, "run_seconds": seconds}, indent=2) + "\n")
    units = {"state": "per state byte", "act_h": "B/elt", "act_i": "B/elt", "logits": "B/elt", "attn": "B/elt",
             "const": "MiB"}
    lines = ["# Peak memory per stage: fitted on CPU (fp32)", "",
             f"Measured {env['date']} ({env['platform']}, {env['cpus']} CPUs, load {env['load_average'][0]:.1f}; "
             + ", ".join(f"{k} {v}" for k, v in env["packages"].items()) + ") by benchmarks/memory_model.py.", "",
             "| stage | state | act_h | act_i | logits | attn | const (MiB) | fit rms / max rel. error (n) | "
             "held-out rel. errors |", "|---|---|---|---|---|---|---|---|---|"]
    for stage, f in fits.items():
        c = f["coefficients"]
        held = ", ".join(f"{h['rel_error']:+.1%}" for h in f["held_out_points"])
        lines.append(f"| {stage} | {c['state']:.3f} | {c['act_h']:.1f} | {c['act_i']:.1f} | {c['logits']:.1f} | "
                     f"{c['attn']:.2f} | {c['const'] / MIB:.0f} | {f['fit']['rms_rel']:.1%} / "
                     f"{f['fit']['max_abs_rel']:.1%} ({f['fit']['n']}) | {held} |")
    lines += ["", "State coefficient fixed at 1 (weights and optimizer states resident once). Free fit of it, as a "
              "check (the state term is nearly collinear with the others on this grid): " + ", ".join(
                  f"{s} {f['coefficients']['state']:.2f} (fit rms {f['fit']['rms_rel']:.1%}, held-out max "
                  f"{f['held_out']['max_abs_rel']:.1%})" for s, f in free.items()) + "."]
    lines += ["", "Units: " + ", ".join(f"{k}: {v}" for k, v in units.items()) + ". Features: see the docstring of "
              "benchmarks/memory_model.py. A dropped feature (negative coefficient) shows as 0."]
    (OUT / "fit.md").write_text("\n".join(lines) + "\n")

    p = ["# Predicted peak GPU memory per GPU (GiB), paper settings", "",
         "bf16 weights and activations; micro-batch 2 pairs (4 sequences) for train, reference batch 8 pairs "
         "(16 sequences), weights-stage SFT and scoring batches of 8 sequences; 1024 tokens per sequence (every "
         "sequence at max_length: an upper bound), log-prob chunks of 256, no gradient checkpointing, "
         "ZeRO-2 on one rank's view (frozen weights replicated).", "",
         "| model | train (LoRA r=16, ZeRO-2) | reference pass | weights: LoRA SFT | weights: scoring |",
         "|---|---|---|---|---|"]
    for name, st in preds.items():
        p.append(f"| {name} | " + " | ".join(f"{st[s]['total_gib']:.1f}" for s in STAGES) + " |")
    p += ["", "Terms (GiB) per model and stage:", "", "| model | stage | " + " | ".join(
        next(iter(next(iter(preds.values())).values()))["terms_gib"]) + " |", "|---|---|" + "---|" * 9]
    for name, st in preds.items():
        for s in STAGES:
            p.append(f"| {name} | {s} | " + " | ".join(f"{v:.2f}" for v in st[s]["terms_gib"].values()) + " |")
    p += ["", "cpu_attn_if_materialised: not in the total; what the attention probabilities would add in bf16 if "
          "the GPU attention kernel materialised them as the CPU's does (eager attention)."]
    alt = gpu_predictions(free)
    p += ["", "Check: the same with every coefficient fitted freely (state included; on this grid the state term is "
          "nearly collinear with the others, so a free fit trades them: train's state coefficient 0.21 is "
          "unphysical, while scoring fits best with 2.03, i.e. something of the weights' (here: the embedding's) "
          "size more than the fixed fit allows):", "",
          "| model | " + " | ".join(STAGES) + " |", "|---|---|---|---|---|"]
    for name, st in alt.items():
        p.append(f"| {name} | " + " | ".join(f"{st[s]['total_gib']:.1f}" for s in STAGES) + " |")
    (OUT / "predictions.md").write_text("\n".join(p) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=("train", "weights"))
    parser.add_argument("--point", type=json.loads)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child")
    parser.add_argument("--jobs", type=int, default=3, help="children at a time")
    parser.add_argument("--resume", action="store_true", help="keep the points of an interrupted run")
    parser.add_argument("--only", type=int, default=0, help="measure only the first N points (no fit)")
    parser.add_argument("--refit", action="store_true", help="fit and predict from results/memory_model/"
                        "measurements.csv, measuring nothing")
    add_result_argument(parser)
    args = parse_args(parser, QUICK, argv)
    if args.child:
        run = child_train if args.child == "train" else child_weights
        write_result(args.result, run(args.point, args.threads))
        return
    env = print_environment()
    started = time.perf_counter()
    if args.refit:
        previous = json.loads((OUT / "fit.json").read_text())
        env, seconds = previous["environment"], previous["run_seconds"]
        finish(read_measurements(), env, seconds)
        return
    points = POINTS[:args.only] if args.only else POINTS
    partial = OUT / "measurements.partial.json"
    done: dict[int, list[dict]] = ({int(k): v for k, v in json.loads(partial.read_text()).items()}
                                   if args.resume and partial.is_file() else {})

    def measure(i: int) -> list[dict]:
        p, t0 = points[i], time.perf_counter()
        out = {kind: run_child(__file__, ["--child", kind, "--point", json.dumps(p), "--threads", str(args.threads)],
                               threads=args.threads, steady_rss=True, env=CHILD_ENV)
               for kind in ("train", "weights")}
        new = measurement_rows(p, out["train"], out["weights"])
        print(f"[{i + 1}/{len(points)}] {p} -> " + ", ".join(f"{r['stage']} {r['peak_mib']:.0f} MiB" for r in new)
              + f" ({time.perf_counter() - t0:.0f} s; attn {out['train']['attn_implementation']}, ZeRO-"
              f"{out['train']['zero_stage']})", flush=True)
        return new

    # Children run --jobs at a time: each measures its own RSS, so they do not disturb each other's figures.
    OUT.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(measure, i): i for i in range(len(points)) if i not in done}
        for fut in as_completed(futures):
            done[futures[fut]] = fut.result()
            partial.write_text(json.dumps(done))
    rows = [r for i in sorted(done) for r in done[i]]
    if args.only:
        print(json.dumps({"rows": rows}))
        return
    finish(rows, env, time.perf_counter() - started)
    partial.unlink()


def finish(rows: list[dict], env: dict, seconds: float) -> None:
    fits = {s: fit_stage([r for r in rows if r["stage"] == s]) for s in STAGES}
    free = {s: fit_stage([r for r in rows if r["stage"] == s], free_state=True) for s in STAGES}
    preds = gpu_predictions(fits)
    write_outputs(rows, fits, free, preds, env, seconds)
    for line in (OUT / "fit.md").read_text().splitlines() + (OUT / "predictions.md").read_text().splitlines()[:12]:
        print(line)
    print(json.dumps({"fit": {s: {"coefficients": f["coefficients"], "fit_rms_rel": f["fit"]["rms_rel"],
                                  "held_out_max_abs_rel": f["held_out"]["max_abs_rel"]} for s, f in fits.items()},
                      "predictions_gib": {m: {s: round(v["total_gib"], 1) for s, v in st.items()}
                                          for m, st in preds.items()}, "seconds": round(seconds)}))


if __name__ == "__main__":
    main()
