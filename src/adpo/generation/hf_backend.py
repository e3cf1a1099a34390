"""transformers `generate` as a generation backend: batched, left-padded, KV-cached, stop strings, seeded sampling.

A LoRA adapter directory is loaded as its base model with the adapter merged in memory (adpo.models.load_policy).

The fallback where vLLM cannot run (no vLLM build, an unsupported head size on CPU); on CPU with tiny models it is
also the faster one. Sequences are sorted by prompt length before batching so that padding stays small.
"""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from adpo.generation.base import Completion, Generator, Request
from adpo.models import load_policy, load_tokenizer, resolve_device

log = logging.getLogger(__name__)


class _StopAndBudget(StoppingCriteria):
    """Ends a row once its generated text contains a stop string, or its own token budget is spent.

    Only the generated tokens are decoded (a stop string straddling the prompt does not count, as in vLLM), and only
    a window at their end: a stop string completed by the newest token lies wholly inside it.
    """

    def __init__(self, tokenizer, prompt_len: int, budgets: list[int], stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.budgets = budgets
        self.stop = stop
        # A character may take up to 4 byte-level tokens; a few more for decoders that drop a leading space.
        self.window = 4 * max((len(s) for s in stop), default=0) + 4
        self.stopped_at: list[int | None] = [None] * len(budgets)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_len:]
        length = generated.shape[1]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        check = []
        for row, budget in enumerate(self.budgets):
            if self.stopped_at[row] is not None or length >= budget:
                done[row] = True
            elif self.stop:
                check.append(row)
        if check:
            tails = generated[check, max(0, length - self.window):].tolist()
            for row, text in zip(check, self.tokenizer.batch_decode(tails, skip_special_tokens=True)):
                if any(s in text for s in self.stop):
                    self.stopped_at[row] = length
                    done[row] = True
        return done


class HFGenerator(Generator):
    backend = "hf"

    def __init__(self, cfg: DictConfig, model_path: str, prompt_format: str = "plain") -> None:
        threads = cfg.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        device = resolve_device(cfg.get("device"))
        trust = bool(cfg.get("trust_remote_code", False))
        tokenizer = load_tokenizer(model_path, trust_remote_code=trust)
        # A LoRA adapter directory (the train stage's default output) is its base model with the adapter merged in
        # memory; the tokenizer is the one saved beside the adapter.
        model = load_policy(model_path, dtype=cfg.get("dtype"), trust_remote_code=trust, device=device,
                            dtype_key="generation.dtype")
        model.eval()
        max_model_len = cfg.get("max_model_len") or getattr(model.config, "max_position_embeddings", None) or 2048
        super().__init__(model_path, tokenizer, max_model_len, prompt_format)
        self.model = model
        self.device = device
        self.batch_size = int(cfg.get("batch_size") or 32)

        # The model's own generation_config may carry sampling defaults (a chat model's temperature 0.6, a
        # repetition penalty...); only its EOS ids are kept, as vLLM does when given explicit sampling params.
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        if not eos_ids:
            raise ValueError(f"{model_path}: neither the tokenizer nor the generation config names an EOS token")
        self.eos_ids = sorted(eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=self.eos_ids, pad_token_id=self.pad_id
        )

    def _generate(self, request: Request) -> list[list[Completion]]:
        # One row per (prompt, sample); greedy samples are all equal, so one row per prompt is enough.
        copies = 1 if request.greedy else request.n
        rows = [(p, k) for p in range(len(request.prompt_ids)) for k in range(copies)]
        # Longest first: a batch that does not fit in memory fails at once, not hours in.
        rows.sort(key=lambda r: -len(request.prompt_ids[r[0]]))
        torch.manual_seed(request.seed)
        results: dict[tuple[int, int], Completion] = {}
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            completions = self._generate_batch(
                [request.prompt_ids[p] for p, _ in batch], [request.budgets[p] for p, _ in batch], request
            )
            results.update(zip(batch, completions))
        return [[results[(p, k if copies > 1 else 0)] for k in range(request.n)]
                for p in range(len(request.prompt_ids))]

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], budgets: list[int], request: Request) -> list[Completion]:
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding: every row's next token is at the same position
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        criterion = _StopAndBudget(self.tokenizer, width, budgets, request.stop)
        # top_k=0: no top-k cut, as in vLLM (transformers' global default is 50).
        sampling = dict(do_sample=True, temperature=request.temperature, top_p=request.top_p, top_k=0) \
            if not request.greedy else dict(do_sample=False)
        output = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            max_new_tokens=max(budgets),
            stopping_criteria=StoppingCriteriaList([criterion]),
            use_cache=True,
            **sampling,
        )
        generated = output[:, width:].tolist()
        return [self._finish(ids, budget, criterion.stopped_at[row], request.stop)
                for row, (ids, budget) in enumerate(zip(generated, budgets))]

    def _finish(self, ids: list[int], budget: int, stopped_at: int | None, stop: tuple[str, ...]) -> Completion:
        """Cut a padded row at its end: the first EOS, else the stop string, else the budget."""
        limit = stopped_at if stopped_at is not None else budget
        eos_at = next((i for i, t in enumerate(ids[:limit]) if t in self.eos_ids), None)
        if eos_at is not None:
            return self.completion(ids[:eos_at + 1], "stop", True, stop)
        if stopped_at is not None:
            return self.completion(ids[:stopped_at], "stop", False, stop)
        return self.completion(ids[:budget], "length", False, stop)

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
