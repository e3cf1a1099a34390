"""Models and tokenizers, loaded the same way by every stage: one dtype rule, one loader, one tokenizer, one LoRA
layout.

    load_causal_lm(name_or_path, dtype="auto", device=...)   a directory or hub id, in the dtype the config names
    load_tokenizer(name_or_path)                              with a pad token (EOS when the model has none)
    lora_config(cfg.train.lora)                               peft's LoraConfig of {r, alpha, dropout, target_modules}

dtype "auto" is bfloat16 on a CUDA GPU that supports it and float32 elsewhere: float32 is the faster on AVX2 CPUs, and
transformers' own "auto" (the checkpoint's dtype) would run a bfloat16 hub model at CPU bfloat16 speed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """None or "auto": the GPU when there is one, else the CPU; otherwise the device named ("cpu", "cuda:1")."""
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device | None = None, *,
                  key: str = "model.dtype") -> torch.dtype:
    """The torch dtype a config's `key` names: "auto" (or None) for the model's `device` (see the module doc),
    float32 / bfloat16 / float16 (also fp32, bf16, fp16, "torch.float32", a torch.dtype)."""
    if name is None or str(name) == "auto":
        device = resolve_device(device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    dtype = _DTYPES.get(str(name).removeprefix("torch."))
    if dtype is None:
        raise ValueError(f"{key}: unknown dtype {name!r} (use auto, float32, bfloat16 or float16)")
    return dtype


def load_causal_lm(name_or_path: str | Path, *, dtype: str | torch.dtype | None = "auto",
                   trust_remote_code: bool = False, revision: str | None = None,
                   device: str | torch.device | None = None, dtype_key: str = "model.dtype"):
    """A transformers causal LM in `dtype` (resolved for `device`; `dtype_key` is the config key named in errors).

    With a device the model is moved there; without one it stays on the CPU for a caller that places it itself (the
    DeepSpeed engine), and "auto" is resolved for the device this machine would run it on.
    """
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, device, key=dtype_key),
                              "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    return model if device is None else model.to(resolve_device(device))


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        # Padding is masked out everywhere; any id will do, and EOS is what DPO trainers commonly use.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def lora_config(lora: Mapping[str, Any]):
    """peft's LoraConfig for a config section {r, alpha, dropout, target_modules} (train.lora, criticality.lora)."""
    from peft import LoraConfig

    return LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                      target_modules=list(lora["target_modules"]), bias="none", task_type="CAUSAL_LM")
