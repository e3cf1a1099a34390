"""adpo.logprobs against the plain computation: the model's own [B, L, V] logits, then log-softmax.

Values and gradients (every trainable parameter, LoRA's too) in float32 and bfloat16, on the four paper
architectures' tiny stand-ins and a Gemma text model with logit soft-capping; the largest tensor made in forward and
backward with chunks against without; SFT's loss and the cDPO weights stage's contrastive scores. ZeRO-2/3 on 2
ranks: tests/test_train_stage.py (chunked ranks against a whole-logits baseline, full fine-tuning and LoRA).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adpo.logprobs import (OutputHead, completion_loss, contrastive_label_probs, final_hidden_states, label_logps,
                           shifted_logps)

ARCHITECTURES = ("llama3_8b", "gemma3_12b", "qwen3_8b", "deepseek_math_7b")


@pytest.fixture(scope="module")
def paper_models(tmp_path_factory):
    from adpo_data_prep.tiny_paper_models import build_tiny_model

    root = tmp_path_factory.mktemp("paper_models")
    return {arch: build_tiny_model(arch, root / arch, warm_up_steps=0) for arch in ARCHITECTURES}


def load(path, dtype=torch.float32):
    from adpo.models import load_causal_lm

    torch.manual_seed(0)
    return load_causal_lm(str(path), dtype="float32").to(dtype).train()


def softcapped_gemma():
    """Gemma-3's text model with final-logit soft-capping (Gemma-2's 30.0): the head must apply it as forward does."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, final_logit_softcapping=30.0,
                              sliding_window=16, layer_types=["sliding_attention", "full_attention"])
    return Gemma3ForCausalLM(config).train()


def batch_for(model, seed=0, rows=3, length=23):
    """Right-padded rows of random tokens; response positions (the shifted frame) at varied offsets."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    positions = torch.zeros(rows, length - 1, dtype=torch.bool)
    for r in range(rows):
        used = length - 2 * r
        mask[r, used:] = 0
        start = 2 + r
        positions[r, start:used - 1] = True
    return ids, mask, positions


def whole_logits_logps(model, ids, mask, positions):
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    picked = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.where(positions, picked, torch.zeros_like(picked))


def values_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    out = fn()
    weights = torch.linspace(-1.0, 2.0, out.numel()).reshape(out.shape)  # a loss that weighs each position its own
    (out * weights).sum().backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close_to(got, expected, rel, msg):
    """Equal to `rel` of the tensor's largest entry: rounding differs with the order of summation (over positions
    into a weight's gradient), elementwise relative error is meaningless for the entries near 0."""
    got, expected = got.float(), expected.float()
    scale = float(expected.abs().max())
    error = float((got - expected).abs().max())
    assert error <= rel * scale, f"{msg}: max error {error:.3g} > {rel:g} x {scale:.3g}"


def assert_same(model, ids, mask, positions, *, chunk_sizes, rel, grad_rel):
    expected, expected_grads = values_and_grads(model, lambda: whole_logits_logps(model, ids, mask, positions))
    assert expected_grads and positions.any()
    for chunk in chunk_sizes:
        got, grads = values_and_grads(model, lambda: shifted_logps(model, ids, mask, positions, chunk_size=chunk))
        assert_close_to(got, expected, rel, f"log-probs, chunk {chunk}")
        assert sorted(grads) == sorted(expected_grads)
        for name, grad in grads.items():
            assert_close_to(grad, expected_grads[name], grad_rel, f"gradient of {name}, chunk {chunk}")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chunks_equal_whole_logits_in_float32(paper_models, arch):
    model = load(paper_models[arch])
    ids, mask, positions = batch_for(model)
    assert_same(model, ids, mask, positions, chunk_sizes=(1, 7, 1000, None), rel=1e-6, grad_rel=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chunks_equal_whole_logits_in_bfloat16(paper_models, arch):
    """bf16 weights and activations, softmax in float32 on both paths: equal to bf16's rounding."""
    model = load(paper_models[arch], torch.bfloat16)
    ids, mask, positions = batch_for(model, seed=1)
    assert_same(model, ids, mask, positions, chunk_sizes=(5, None), rel=1e-2, grad_rel=2e-2)


def test_softcapped_logits_as_the_model_computes_them():
    model = softcapped_gemma()
    assert OutputHead.of(model).softcap == 30.0
    ids, mask, positions = batch_for(model, seed=2)
    assert_same(model, ids, mask, positions, chunk_sizes=(4, None), rel=1e-6, grad_rel=1e-5)


def test_lora_gradients_equal(paper_models):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load(paper_models["llama3_8b"]),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                      target_modules=["q_proj", "v_proj", "down_proj"]))
    ids, mask, positions = batch_for(model, seed=3)
    expected, expected_grads = values_and_grads(model, lambda: whole_logits_logps(model, ids, mask, positions))
    assert expected_grads and all("lora_" in n for n in expected_grads)
    got, grads = values_and_grads(model, lambda: shifted_logps(model, ids, mask, positions, chunk_size=3))
    assert_close_to(got, expected, 1e-6, "log-probs")
    for name in expected_grads:
        assert_close_to(grads[name], expected_grads[name], 1e-5, name)


class LargestTensor(TorchDispatchMode):
    """The most elements of any tensor an aten op returns while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_no_tensor_of_the_whole_logits_exists(paper_models):
    """Forward and backward of the chunked path make no tensor larger than a chunk's logits; the plain path does
    (the check can fail)."""
    model = load(paper_models["qwen3_8b"])
    vocab = model.get_output_embeddings().weight.shape[0]
    ids, mask, positions = batch_for(model, rows=4, length=40)
    chunk = 8
    for chunk_size in (chunk, None):
        model.zero_grad(set_to_none=True)
        with LargestTensor() as seen:
            shifted_logps(model, ids, mask, positions, chunk_size=chunk_size).sum().backward()
        if chunk_size is None:
            assert seen.numel >= int(positions.sum()) * vocab
        else:
            # the largest is a chunk's logits (or a weight matrix of the model, no bigger here)
            assert seen.numel <= max(chunk * vocab, max(p.numel() for p in model.parameters()))


def test_completion_loss_is_transformers_causal_lm_loss(paper_models):
    model = load(paper_models["deepseek_math_7b"])
    ids, mask, positions = batch_for(model, seed=4)
    labels = torch.full_like(ids, -100)
    labels[:, 1:][positions] = ids[:, 1:][positions]
    model.zero_grad(set_to_none=True)
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    expected_grad = model.lm_head.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    got = completion_loss(model, ids, mask, labels, chunk_size=6)
    got.backward()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert_close_to(model.lm_head.weight.grad, expected_grad, 1e-5, "gradient of lm_head")


def test_contrastive_scores_equal_whole_logits(paper_models):
    """cDPO's p_CE from two adapters' hidden states, chunked, against softmax((1 + lam) z+ - lam z-) on whole logits."""
    from peft import LoraConfig, get_peft_model

    from adpo_data_prep.criticality import contrastive_token_probs

    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["gate_proj", "up_proj"])
    model = get_peft_model(load(paper_models["llama3_8b"]).eval(), lora, adapter_name="positive")
    model.add_adapter("negative", lora)
    ids, mask, positions = batch_for(model, seed=5)
    hidden, logits = {}, {}
    with torch.no_grad():
        for name in ("positive", "negative"):
            model.set_adapter(name)
            hidden[name] = final_hidden_states(model, ids, mask)[:, :-1][positions]
            logits[name] = model(input_ids=ids, attention_mask=mask).logits[:, :-1][positions]
    assert not torch.allclose(logits["positive"], logits["negative"])
    labels = ids[:, 1:][positions]
    expected = contrastive_token_probs(logits["positive"][None], logits["negative"][None], labels[None], 1.0)[0]
    for chunk in (3, None):
        got = contrastive_label_probs(hidden["positive"], hidden["negative"], labels, OutputHead.of(model), lam=1.0,
                                      chunk_size=chunk)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_bad_chunk_sizes_and_heads_are_refused(paper_models):
    model = load(paper_models["llama3_8b"])
    head = OutputHead.of(model)
    hidden, labels = torch.zeros(4, model.config.hidden_size), torch.zeros(4, dtype=torch.long)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive number of positions"):
            label_logps(hidden, labels, head, chunk_size=bad)
    wrapped = OutputHead(torch.nn.Sequential(model.lm_head))
    with pytest.raises(ValueError, match="torch.nn.Linear"):
        label_logps(hidden, labels, wrapped, chunk_size=2)
    assert label_logps(hidden, labels, wrapped, chunk_size=None).shape == (4,)  # the plain path takes any head
