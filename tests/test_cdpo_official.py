"""method=cdpo_official against a transcription of the official cDPO trainer (chenzhiling9954/Critical-Tokens-Matter,
src/train/train_cdpo.py: CDPOTrainer.get_batch_logps and dpo_loss; src/pipeline.py: calculate_ce_score for the layout
of ce_prob; TRL's DPOTrainer for the batch it gets: [chosen rows; rejected rows], right-padded to the longest row,
labels -100 on prompt and padding, EOS appended to each response).

Both sides get the same logits; the official side works on TRL's label grid, ours on PairBatch's masks, weights and
make_batch's EOS rule, through adpo.training.step.compute_loss's own pieces (per_token_logps, preference_loss).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from adpo.losses import per_token_logps, preference_loss
from adpo.training.pairs_data import TokenizedPair, make_batch
from adpo.training.step import MethodSpec

VOCAB, BOS, EOS, PAD = 23, 1, 2, 0


# --- the official code, transcribed (label_smoothing 0, only_neg True, as its train_config.py sets) ----------------
def official_get_batch_logps(logits, labels, label_pad_token_id=-100):
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != label_pad_token_id
    labels[labels == label_pad_token_id] = 0
    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    return per_token_logps * loss_mask


def official_dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, prob_result, beta,
                      model_name):
    batch_size = policy_chosen.size(0)
    chosen_list = [torch.tensor(line["pos"]["ce_prob"] + [1]) for line in prob_result]
    if "Qwen" in model_name:
        rejected_list = [1 - torch.tensor([0] + line["neg"]["ce_prob"]) for line in prob_result]
    else:
        rejected_list = [1 - torch.tensor(line["neg"]["ce_prob"] + [0]) for line in prob_result]
    padded = pad_sequence(chosen_list + rejected_list, batch_first=True, padding_value=0)
    rejected_rewards = padded[batch_size:]
    chosen_logratio = policy_chosen - reference_chosen  # only_neg
    if "Qwen" in model_name:
        ones = torch.ones(batch_size, 1, dtype=rejected_rewards.dtype)
        rejected_rewards = torch.cat([rejected_rewards, ones], dim=1)
    rejected_logratio = rejected_rewards * (policy_rejected - reference_rejected)
    logits = chosen_logratio - rejected_logratio
    return (-F.logsigmoid(beta * logits)).mean()


def official_loss(policy_logits, reference_logits, labels, prob_result, beta, model_name):
    b = labels.shape[0] // 2
    policy = official_get_batch_logps(policy_logits, labels)
    with torch.no_grad():
        reference = official_get_batch_logps(reference_logits, labels)
    return official_dpo_loss(policy[:b], policy[b:], reference[:b], reference[b:], prob_result, beta, model_name)


# --- one random batch, in both layouts ------------------------------------------------------------------------------
def random_pairs(g: torch.Generator, num_pairs: int, qwen: bool):
    """Pairs of random prompts/responses with per-token p_CE, and the official side's prob_result for them.

    Llama-like: text = BOS + prompt + response, and the trainer's row is text + EOS. Qwen (no BOS of its own): the
    official code sets bos = eos, so TRL's row is EOS + text + EOS while calculate_ce_score saw text alone.
    """
    def tokens(lo, hi):
        n = int(torch.randint(lo, hi, (1,), generator=g))
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    pairs, prob_result = [], []
    for _ in range(num_pairs):
        prompt = tokens(1, 7)
        responses = {"pos": tokens(1, 9), "neg": tokens(1, 9)}
        lead = [] if qwen else [BOS]  # what tokenizer(text) gives before the prompt
        entry, weights = {}, {}
        for key, response in responses.items():
            scored = lead + prompt + response
            ce_prob = torch.rand(len(scored) - 1, generator=g).tolist()
            entry[key] = {"ce_prob": ce_prob}
            # p_CE of response token k (index len(lead + prompt) + k of the scored text) is ce_prob[index - 1]; the
            # EOS was never scored: the weights stage's value for it is arbitrary here and replaced by eos_weight.
            start = len(lead) + len(prompt) - 1
            weights[key] = [1.0 - p for p in ce_prob[start:]] + [float(torch.rand(1, generator=g))]
        prompt_ids = ([EOS] if qwen else [BOS]) + prompt
        pairs.append(TokenizedPair(prompt_ids, responses["pos"] + [EOS], responses["neg"] + [EOS],
                                   None, weights["neg"]))
        prob_result.append(entry)
    return pairs, prob_result


def trl_labels(pairs) -> torch.Tensor:
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    width = max(len(a) + len(b) for a, b in rows)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (prompt, response) in enumerate(rows):
        labels[i, len(prompt): len(prompt) + len(response)] = torch.tensor(response)
    return labels


def our_loss(policy_logits, reference_logits, batch, method: MethodSpec):
    """compute_loss's arithmetic on given logits (compute_loss itself runs a model)."""
    labels = batch.input_ids[:, 1:]
    logps = torch.where(batch.response_mask, per_token_logps(policy_logits[:, :-1], labels), 0.0)
    with torch.no_grad():
        reference = torch.where(batch.response_mask, per_token_logps(reference_logits[:, :-1], labels), 0.0)
    b = batch.num_pairs
    ratios = logps - reference
    losses, _ = preference_loss(ratios[:b], ratios[b:], batch.response_mask[:b], batch.response_mask[b:],
                                beta=method.beta, granularity=method.granularity, rejected_weights=batch.weights[b:],
                                length_mode=method.length_mode, reduction=method.reduction,
                                segment_loss=method.segment_loss)
    return losses.mean()


def cdpo_official(**overrides) -> MethodSpec:
    from adpo.config import compose  # the shipped method file, as `method=cdpo_official` composes it

    cfg = compose("train", ["method=cdpo_official", *(f"method.{k}={v}" for k, v in overrides.items())])
    return MethodSpec.from_cfg(cfg.method)


@pytest.mark.parametrize("qwen", [False, True], ids=["llama", "qwen-branch"])
@pytest.mark.parametrize("seed", range(6))
def test_value_and_gradient_equal_the_official_code(seed, qwen):
    g = torch.Generator().manual_seed(1000 * qwen + seed)
    method = cdpo_official(eos_weight="longest") if qwen else cdpo_official()
    pairs, prob_result = random_pairs(g, num_pairs=int(torch.randint(1, 5, (1,), generator=g)), qwen=qwen)
    batch = make_batch(pairs, [(torch.zeros(len(p.chosen_ids)), torch.zeros(len(p.rejected_ids))) for p in pairs],
                       PAD, use_weights=True, eos_weight=method.eos_weight, eos_token_id=EOS)
    labels = trl_labels(pairs)
    assert labels.shape == batch.input_ids.shape  # the same grid: TRL pads chosen and rejected to the longest row
    shape = (*labels.shape, VOCAB)
    # float32, the precision of per_token_logps and the batch's weights (the official trainer's, without bf16)
    policy = (3 * torch.randn(shape, generator=g)).requires_grad_()
    reference = policy.detach() + 0.5 * torch.randn(shape, generator=g)

    expected = official_loss(policy, reference, labels, prob_result, method.beta, "Qwen2.5-7B" if qwen else "Llama")
    (expected_grad,) = torch.autograd.grad(expected, policy)
    got = our_loss(policy, reference, batch, method)
    (got_grad,) = torch.autograd.grad(got, policy)

    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-8)
    assert expected_grad.abs().sum() > 0


def test_at_the_reference_the_loss_is_log_2_on_every_position():
    """The official loss at the start of training: every grid position, response or not, adds log 2."""
    g = torch.Generator().manual_seed(7)
    pairs, _ = random_pairs(g, num_pairs=3, qwen=False)
    method = cdpo_official()
    batch = make_batch(pairs, [(torch.zeros(len(p.chosen_ids)), torch.zeros(len(p.rejected_ids))) for p in pairs],
                       PAD, use_weights=True, eos_weight=method.eos_weight, eos_token_id=EOS)
    logits = torch.randn((*batch.input_ids.shape, VOCAB), generator=g)
    assert our_loss(logits, logits, batch, method).item() == pytest.approx(math.log(2), rel=1e-6)


def test_the_grid_normaliser_is_the_batch_width_not_the_pair():
    """One pair's loss depends on the micro-batch it sits in (the official losses.mean() over the padded grid):
    alone it is averaged over its own positions; beside a longer pair, over more."""
    g = torch.Generator().manual_seed(3)
    d_w, d_l = torch.randn(1, 4, generator=g), torch.randn(1, 4, generator=g)
    mask = torch.tensor([[False, True, True, True]])
    alone, _ = preference_loss(d_w, d_l, mask, mask, beta=0.5, granularity="token", reduction="grid")
    wide = lambda x: torch.cat([x, torch.zeros(1, 6)], dim=1)  # noqa: E731  (the same pair, padded to 10 columns)
    padded, _ = preference_loss(wide(d_w), wide(d_l), wide(mask).bool(), wide(mask).bool(), beta=0.5,
                                granularity="token", reduction="grid")
    summed, _ = preference_loss(d_w, d_l, mask, mask, beta=0.5, granularity="token", reduction="sum")
    assert alone.item() == pytest.approx((summed.item() + math.log(2)) / 4)
    assert padded.item() == pytest.approx((summed.item() + 7 * math.log(2)) / 10)


def test_grid_reduction_needs_token_granularity():
    x, m = torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="token granularity"):
        preference_loss(x, x, m, m, beta=0.1, granularity="static:4", reduction="grid")
    with pytest.raises(ValueError, match="token granularity"):
        cdpo_official(granularity="adaptive:4")


@pytest.mark.parametrize("value", ["-0.5", "2", "banana"])
def test_bad_eos_weight_is_refused_naming_the_key(value):
    with pytest.raises(ValueError, match="method.eos_weight"):
        cdpo_official(eos_weight=value)


def test_length_limits_are_the_official_filter_at_its_boundaries(tiny_model_dir):
    """The official get_cdpo_train_dataset keeps a pair when len(tokenizer(question)) < 512 and
    len(tokenizer(question + response)) < 1024 for both responses: strict, BOS counted, no EOS."""
    from transformers import AutoTokenizer

    from adpo.data.tokenize import within_length_limits

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt, short, long = "Question: 3 + 4?\nAnswer:", " 3 + 4 = 7.", " 3 + 4 = 7. The answer is 7."
    n_prompt = len(tok(prompt)["input_ids"])
    n_long = len(tok(long, add_special_tokens=False)["input_ids"])

    def keep(max_prompt_length, max_length):
        return within_length_limits(tok, prompt, (short, long), max_prompt_length=max_prompt_length,
                                    max_length=max_length)

    assert keep(n_prompt + 1, n_prompt + n_long + 1)
    assert not keep(n_prompt, n_prompt + n_long + 1)  # prompt of exactly max_prompt_length tokens: dropped
    assert not keep(n_prompt + 1, n_prompt + n_long)  # the longer response reaches max_length: dropped
    assert keep(None, None)
