"""Models and tokenizers, loaded the same way by every stage: one dtype rule, one loader, one tokenizer, one LoRA
layout.

    load_causal_lm(name_or_path, dtype="auto", device=...)   a directory or hub id, in the dtype the config names
    load_policy(name_or_path, ...)                            the same, or a LoRA adapter directory (the train stage's
                                                              default output): its base model with the adapter merged
    adapter_info(path)                                        a LoRA adapter directory's base model and rank, or None
    load_tokenizer(name_or_path)                              with a pad token (EOS when the model has none)
    lora_config(cfg.train.lora, model=None)                   peft's LoraConfig of {r, alpha, dropout, target_modules}
                                                              (given the model: on its language model only)
    copy_processor_files(src, dst_dir)                        what a multimodal checkpoint needs beyond weights and
                                                              tokenizer, into an exported model directory

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


ADAPTER_CONFIG = "adapter_config.json"


def resolve_model_path(name_or_path: str | Path) -> str:
    """A local directory as an absolute path (what a directory written elsewhere can find again); a hub id as is."""
    path = Path(str(name_or_path)).expanduser()
    return str(path.resolve()) if path.is_dir() else str(name_or_path)


def adapter_info(path: str | Path) -> dict[str, Any] | None:
    """For a local PEFT LoRA adapter directory (adapter_config.json, no config.json of its own): its base model
    (`base_model`, `revision`) and its largest rank `r`; None for anything else (a full or merged model directory, a
    hub id). A relative base path is read relative to the adapter directory."""
    import json

    path = Path(str(path))
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file() or (path / "config.json").is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config_file}: no base_model_name_or_path; the adapter does not say which model it adapts")
    if not Path(base).is_absolute() and (path / base).is_dir():
        base = str((path / base).resolve())
    ranks = [int(config.get("r") or 0), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    return {"base_model": str(base), "revision": config.get("revision"), "r": max(ranks),
            "peft_type": config.get("peft_type")}


def load_policy(name_or_path: str | Path, *, dtype: str | torch.dtype | None = "auto", trust_remote_code: bool = False,
                revision: str | None = None, device: str | torch.device | None = None,
                dtype_key: str = "model.dtype"):
    """load_causal_lm for a model directory or hub id; for a LoRA adapter directory (adapter_info), its base model
    in `dtype` with the adapter applied and merged in memory (a plain transformers model, as a merged export loads)."""
    adapter = adapter_info(name_or_path)
    if adapter is None:
        return load_causal_lm(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision,
                              device=device, dtype_key=dtype_key)
    from peft import PeftModel

    base = load_causal_lm(adapter["base_model"], dtype=dtype, trust_remote_code=trust_remote_code,
                          revision=adapter["revision"], dtype_key=dtype_key)
    model = PeftModel.from_pretrained(base, str(name_or_path), is_trainable=False).merge_and_unload()
    return model if device is None else model.to(resolve_device(device))


VOCABULARY_ID = "vocab-sha256:"


def vocabulary_id(tokenizer) -> str:
    """The tokenizer's vocabulary as a short digest: cDPO weights made with one tokenizer line up with a policy whose
    vocabulary has the same digest, wherever either lives (a path would tie the pairs file to one machine)."""
    import hashlib
    import json

    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return VOCABULARY_ID + hashlib.sha256(vocab.encode()).hexdigest()[:16]


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False, *, local_files_only: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code,
                                              local_files_only=local_files_only)
    if _lost_byte_level_pipeline(tokenizer, name_or_path):
        from transformers import TokenizersBackend

        tokenizer = TokenizersBackend.from_pretrained(str(name_or_path), local_files_only=local_files_only)
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        # Padding is masked out everywhere; any id will do, and EOS is what DPO trainers commonly use.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _file_in(name_or_path: str | Path, filename: str) -> Path | None:
    """`filename` of a model directory or (from the local cache, or the hub when online) of a hub id; None if the
    model has no such file."""
    from transformers.utils import cached_file

    try:
        found = cached_file(str(name_or_path), filename, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
    except OSError:
        return None
    return Path(found) if found else None


def _has_byte_level(pre_tokenizer: Mapping[str, Any] | None) -> bool:
    if not pre_tokenizer:
        return False
    if pre_tokenizer.get("type") == "Sequence":
        return any(_has_byte_level(step) for step in pre_tokenizer.get("pretokenizers", []))
    return pre_tokenizer.get("type") == "ByteLevel"


def _lost_byte_level_pipeline(tokenizer, name_or_path: str | Path) -> bool:
    """True when tokenizer.json is a byte-level BPE but the class its tokenizer_config.json names rebuilt another
    pipeline: transformers 5's LlamaTokenizer does so for DeepSeek's files ("LlamaTokenizerFast" over a byte-level
    BPE; huggingface/transformers#48206), dropping every space of the prompts."""
    import json

    from transformers import TokenizersBackend

    backend = getattr(tokenizer, "backend_tokenizer", None)
    # transformers' rule: a subclass with an __init__ of its own rebuilds the pipeline, others load the file as
    # written. Only then is the file read (a big one, Gemma's, takes a while to parse).
    cls = type(tokenizer)
    if backend is None or cls is TokenizersBackend or "__init__" not in cls.__dict__:
        return False
    if _has_byte_level(json.loads(backend.to_str()).get("pre_tokenizer")):
        return False
    path = _file_in(name_or_path, "tokenizer.json")
    return path is not None and _has_byte_level(json.loads(path.read_text(encoding="utf-8")).get("pre_tokenizer"))


def lora_config(lora: Mapping[str, Any], model=None):
    """peft's LoraConfig for a config section {r, alpha, dropout, target_modules} (train.lora, criticality.lora).

    Given the model it will wrap, modules outside its language model are excluded: target names like q_proj also
    name the attention projections of a vision tower (Gemma-3's SigLIP), which the method does not train. A
    text-only model gets the same config as without it.
    """
    from peft import LoraConfig

    targets = list(lora["target_modules"])
    excluded = non_language_subtrees(model, targets) if model is not None else []
    return LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                      target_modules=targets, bias="none", task_type="CAUSAL_LM",
                      exclude_modules=_subtree_pattern(excluded) if excluded else None)


def non_language_subtrees(model, target_names) -> list[str]:
    """Names of the submodules beside the language model (e.g. "model.vision_tower") that hold modules a LoRA
    targeting `target_names` would wrap; [] for a text-only model."""
    if not hasattr(model, "get_decoder"):
        return []
    language_model = model.get_decoder()
    language_name = next(name for name, module in model.named_modules() if module is language_model)
    language_path = language_name.split(".") if language_name else []
    subtrees = set()
    for name, _ in model.named_modules():
        path = name.split(".")
        if path[-1] not in target_names or path[:len(language_path)] == language_path:
            continue
        shared = 0
        while shared < min(len(path), len(language_path)) and path[shared] == language_path[shared]:
            shared += 1
        subtrees.add(".".join(path[:shared + 1]))
    return sorted(subtrees)


def _subtree_pattern(subtrees: list[str]) -> str:
    """A regex peft matches against whole module names: a subtree's root and everything under it."""
    import re

    return "(?:" + "|".join(re.escape(s) for s in subtrees) + r")(?:\..*)?"


# What a multimodal checkpoint needs beside weights (save_pretrained) and tokenizer files (tokenizer.save_pretrained)
# for AutoProcessor and vLLM to load it: the image (and video) preprocessing, the processor's own settings, the
# chat template when it lives in a file of its own, and the special-token map older readers use.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                   "chat_template.json", "chat_template.jinja", "special_tokens_map.json")
# A checkpoint with any of these is multimodal; without them there is nothing to copy.
_MULTIMODAL_MARKERS = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")


def copy_processor_files(src: str | Path, dst_dir: str | Path) -> list[str]:
    """Copy PROCESSOR_FILES that `src` (a model directory or hub id) has and `dst_dir` lacks; returns their names.

    For an exported policy of a multimodal model (e.g. Gemma-3): save_pretrained writes it without them, and
    AutoProcessor, which vLLM uses for a multimodal model's inputs, then fails on it. A text-only model has no
    processor files: nothing is copied. A file the export already wrote (the tokenizer's chat template) is kept.
    """
    import shutil

    if not any(_file_in(src, name) for name in _MULTIMODAL_MARKERS):
        return []
    dst_dir = Path(dst_dir)
    copied = []
    for name in PROCESSOR_FILES:
        source = _file_in(src, name)
        if source is not None and not (dst_dir / name).exists():
            shutil.copyfile(source, dst_dir / name)
            copied.append(name)
    return copied
