"""One generation interface, two backends (vLLM, transformers), and sharded resumable runs.

    gen = load_generator(cfg.generation, model_path)
    completions = gen.generate(prompts, n=4, temperature=0.7, top_p=0.95, max_tokens=512, stop=["\\n\\nQuestion:"])
    completions[i][k].text, .token_ids, .finish_reason

adpo.generation.shards runs a long job shard by shard; adpo.generation.graded generates and grades one shard of
problems (the sample and eval stages' shared work).

Backends are imported lazily: importing this package does not import vLLM.
"""

from __future__ import annotations

import logging

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adpo.generation.base import Completion, Generator

BACKENDS = ("vllm", "hf")

__all__ = ["BACKENDS", "Completion", "Generator", "load_generator"]


log = logging.getLogger(__name__)

def load_generator(generation_cfg: DictConfig | Mapping[str, Any], model_path: str | Path,
                   prompt_format: str | None = None) -> Generator:
    """The backend `generation_cfg.backend` names, loaded with the model at `model_path` (a directory or hub id).

    prompt_format ("plain" | "chat") decides whether the tokenizer adds its special tokens to prompts
    (adpo.data.tokenize.encode_prompt); it defaults to generation_cfg.prompt_format, else "plain".
    """
    cfg = generation_cfg if isinstance(generation_cfg, DictConfig) else OmegaConf.create(dict(generation_cfg))
    backend = cfg.get("backend")
    prompt_format = prompt_format or cfg.get("prompt_format") or "plain"
    model_path = str(model_path)
    if backend == "hf":
        from adpo.generation.hf_backend import HFGenerator

        return HFGenerator(cfg, model_path, prompt_format)
    if backend == "vllm":
        from adpo.generation.vllm_backend import VLLMGenerator, cpu_refusal

        reason = cpu_refusal(model_path, bool(cfg.get("trust_remote_code", False)))
        if reason is None:
            return VLLMGenerator(cfg, model_path, prompt_format)
        if cfg.get("cpu_fallback") != "hf":
            raise ValueError(f"{reason}; use generation=hf, or generation.cpu_fallback=hf to fall back to it")
        # Said where a user reads it: the stage's output and log name the backend that ran.
        message = f"vLLM on CPU cannot run {model_path}: {reason}; generating with transformers (cpu_fallback=hf)"
        log.warning(message)
        print(message, flush=True)
        from adpo.generation.hf_backend import HFGenerator

        return HFGenerator(cfg, model_path, prompt_format)
    raise ValueError(f"generation.backend must be one of {BACKENDS}, got {backend!r}")
