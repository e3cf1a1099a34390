"""Stage 'sft' (toy task only): train a tiny Llama from scratch on the worked solutions into an imperfect base model.

This builds the quickstart's base model; it is not the paper's method, so it is a plain torch loop (AdamW, warm-up
then cosine decay, completion-only loss on the worked solution after the zero-shot prompt that sampling,
training and evaluation use: adpo.data.prompts). It checkpoints every `sft.checkpoint_every` steps and a killed run
resumes from the last checkpoint with the same batches and optimizer state, so the final model is the same as an
uninterrupted run's; a checkpoint or finished model of another config stops the stage (OutputConflict) instead of
being replaced. Output: output_dir/model (weights + tokenizer, transformers format).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from adpo.config import stage_main
from adpo.config_diff import check_made_for, check_manifest
from adpo.data.prompts import build_prompt, response_text, trailing_space_of, zero_shot_prompt
from adpo.data.records import Problem, read_problems
from adpo.data.tokenize import EncodedResponse, collate_responses, encode_pair, encode_prompt
from adpo.io import atomic_directory, atomic_write_json
from adpo.logprobs import DEFAULT_CHUNK_SIZE, completion_loss
from adpo.manifest import config_hash, identity, is_complete, mark_running, write_manifest
from adpo.models import load_causal_lm, load_tokenizer
from adpo.progress import Progress, progress_every
from adpo_data_prep.toy.model import build_tiny_llama
from adpo_data_prep.toy.tokenizer import build_tokenizer
from adpo.tracking import init_wandb

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
TRAINER_STATE = "trainer_state.pt"
OUTPUT_OPTION = "paths.base_model"  # the key that names output_dir, offered when it holds another config's model
_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def lr_at(step: int, cfg: DictConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """The examples of `step`: epochs are seeded permutations, so any step's batch is known without replay."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[k * batch_size:(k + 1) * batch_size]


def encode_examples(problems: list[Problem], tokenizer: PreTrainedTokenizerBase, cfg: DictConfig,
                    model_cfg: DictConfig) -> list[EncodedResponse]:
    """(prompt, solution) token ids per problem, tokenised exactly as the preference stages tokenise pairs."""
    examples = []
    trailing_space = trailing_space_of(model_cfg)
    for p in problems:
        if not p.solution:
            raise ValueError(f"problem {p.id} has no worked solution; the sft stage trains on solutions")
        prompt = build_prompt(p, "zero_shot", model_cfg.prompt_format, tokenizer, trailing_space=trailing_space)
        examples.append(encode_pair(tokenizer, prompt, response_text(p.solution, trailing_space),
                                    prompt_format=model_cfg.prompt_format,
                                    max_prompt_length=model_cfg.max_prompt_length, max_length=cfg.max_length))
    return examples


def final_answer(text: str) -> str | None:
    match = _FINAL.search(text)
    return match.group(1).replace(",", "") if match else None


@torch.no_grad()
def greedy_accuracy(model, tokenizer: PreTrainedTokenizerBase, problems: list[Problem], *,
                    max_new_tokens: int = 160, batch_size: int = 32, prompt_format: str = "plain",
                    trailing_space: bool = False) -> float:
    """Exact match of the greedy answer's `#### N` with the gold answer (HF generate, left-padded batches)."""
    model.eval()
    correct = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        prompts = [encode_prompt(tokenizer, build_prompt(p, "zero_shot", prompt_format, tokenizer,
                                                         trailing_space=trailing_space), prompt_format)
                   for p in chunk]
        width = max(map(len, prompts))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in prompts])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for p, seq in zip(chunk, out[:, width:]):
            correct += final_answer(tokenizer.decode(seq, skip_special_tokens=True)) == p.gold
    return correct / max(1, len(problems))


def _trainer_state(step: int, optimizer, key: dict) -> dict:
    """What a checkpoint carries besides the model: the step, the optimizer, and the identity it was made under."""
    return {"step": step, "optimizer": optimizer.state_dict() if optimizer else None, "config_hash": config_hash(key),
            "made_for": key}


def _save_checkpoint(path: Path, model, tokenizer, optimizer, step: int, key: dict) -> None:
    with atomic_directory(path) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        torch.save(_trainer_state(step, optimizer, key), tmp / TRAINER_STATE)


def _start_or_resume(cfg: DictConfig, problems: list[Problem], ckpt: Path, key: dict):
    """Load the last checkpoint of this very config, or build the tokenizer and a random model (step 0). A checkpoint
    of another config is never replaced: OutputConflict names what differs."""
    s = cfg.sft
    state = torch.load(ckpt / TRAINER_STATE, weights_only=False) if (ckpt / TRAINER_STATE).is_file() else None
    if state is not None:
        check_made_for(ckpt, "an sft checkpoint", stored=state.get("made_for"), current=key,
                       stored_hash=state.get("config_hash"), option=OUTPUT_OPTION)
    else:
        with atomic_directory(ckpt) as tmp:
            trailing_space = trailing_space_of(cfg.model)
            texts = [zero_shot_prompt(p.dataset, p.question, trailing_space) + response_text(p.solution or "",
                                                                                             trailing_space)
                     for p in problems]
            tokenizer = build_tokenizer(texts, tmp, vocab_size=s.vocab_size)
            build_tiny_llama(tokenizer, tmp, hidden_size=s.hidden_size, num_layers=s.num_layers,
                             num_heads=s.num_heads, intermediate_size=s.intermediate_size,
                             max_position_embeddings=max(1024, s.max_length), seed=s.seed)
            torch.save(_trainer_state(0, None, key), tmp / TRAINER_STATE)
        state = torch.load(ckpt / TRAINER_STATE, weights_only=False)
    tokenizer = load_tokenizer(ckpt)
    model = load_causal_lm(ckpt, dtype="float32")
    return tokenizer, model, state


def run(cfg: DictConfig) -> dict:
    out, data = Path(cfg.output_dir), Path(cfg.input_dir)
    inputs = [data]
    key = identity(cfg, "sft")
    if is_complete(out, key, inputs):
        log.info("sft: %s is complete (manifest matches); skipping", out)
        return {}
    s = cfg.sft
    if s.num_threads:
        torch.set_num_threads(int(s.num_threads))
    # A base model of another config (finished) in `out` is never overwritten.
    check_manifest(out, lambda config, _inputs: identity(config, "sft"), cfg, option=OUTPUT_OPTION)
    problems = read_problems(data / "train.jsonl")
    ckpt = out / CHECKPOINT
    tokenizer, model, state = _start_or_resume(cfg, problems, ckpt, key)
    mark_running(out, "sft", key, inputs)  # after the checkpoint's own check: a refused run changes nothing
    examples = encode_examples(problems, tokenizer, s, cfg.model)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("sft: %d train examples, %.2fM parameters, %d steps (resuming at %d)",
             len(examples), n_params / 1e6, s.steps, state["step"])

    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=s.weight_decay)
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    run_ = init_wandb(cfg, job_type="sft")
    model.train()
    start, t0, loss_sum, loss_n, last_loss = state["step"], time.time(), 0.0, 0, float("nan")
    bar = Progress(s.steps, "sft", "step", initial=start, bar=bool(cfg.progress), every_s=progress_every(cfg))
    for step in range(start, s.steps):
        lr = lr_at(step, s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Labels on the solution only: a completion-only loss.
        batch = collate_responses([examples[i] for i in batch_indices(step, len(examples), s.batch_size, s.seed)],
                                  tokenizer.pad_token_id, with_labels=True)
        loss = completion_loss(model, **batch, chunk_size=s.get("logps_chunk_size", DEFAULT_CHUNK_SIZE))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        loss_sum, loss_n, last_loss = loss_sum + loss.item(), loss_n + 1, loss.item()
        if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
            avg = loss_sum / loss_n
            bar.set_figures(loss=avg, lr=lr)
            log.info("sft step %d/%d loss %.4f lr %.2e", step + 1, s.steps, avg, lr)
            if run_ is not None:
                run_.log({"train/loss": avg, "train/lr": lr, "train/grad_norm": float(grad_norm)}, step=step + 1)
            loss_sum, loss_n = 0.0, 0
        bar.update(1)
        if s.checkpoint_every and (step + 1) % s.checkpoint_every == 0 and step + 1 < s.steps:
            _save_checkpoint(ckpt, model, tokenizer, optimizer, step + 1, key)
    bar.close()

    outputs = {"model": str(out / "model"), "steps": int(s.steps), "parameters": n_params,
               "final_loss": last_loss, "train_seconds": round(time.time() - t0, 1)}
    if s.eval_problems:
        test = read_problems(data / "test.jsonl")[: s.eval_problems]
        acc = greedy_accuracy(model, tokenizer, test, max_new_tokens=s.eval_max_new_tokens,
                              prompt_format=cfg.model.prompt_format,
                              trailing_space=trailing_space_of(cfg.model))
        outputs["greedy_accuracy"] = {"accuracy": acc, "problems": len(test)}
        log.info("sft: greedy accuracy %.3f on %d test problems", acc, len(test))
        if run_ is not None:
            run_.log({"eval/greedy_accuracy": acc}, step=s.steps)
    with atomic_directory(out / "model") as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    atomic_write_json(out / "sft_summary.json", outputs)
    write_manifest(out, "sft", key, inputs, outputs=outputs)
    shutil.rmtree(ckpt, ignore_errors=True)
    if run_ is not None:
        run_.finish()
    return outputs


main = stage_main("sft")(run)

if __name__ == "__main__":
    main()
