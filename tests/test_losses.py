"""preference_loss against method.md: identities, hand-computed values, an independent loop implementation, gradients."""

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from adpo.losses import per_token_logps, preference_loss
from adpo.segments import parse_granularity, segment_ids

GRANULARITIES = ["sequence", "token", "static:1", "static:3", "static:8", "adaptive:1", "adaptive:3", "adaptive:7"]


def reference_loss(d_w, d_l, a_w, a_l, beta, granularity, length_mode, reduction):
    """Straight transcription of method.md for one pair of 1-D response tensors (no masks, no batching)."""
    if length_mode == "min":
        t = min(len(d_w), len(d_l))
        d_w, d_l, a_w, a_l = d_w[:t], d_l[:t], a_w[:t], a_l[:t]
    x_w, x_l = a_w * d_w, a_l * d_l
    kind, _, size = granularity.partition(":")

    def split(x):
        if kind == "sequence":
            return [x.sum()]
        if kind == "token":
            return list(x)
        if kind == "static":
            k = int(size)
            return [x[i : i + k].sum() for i in range(0, len(x), k)]
        return [part.sum() for part in torch.tensor_split(x, int(size))]

    s_w, s_l = split(x_w), split(x_l)
    n = max(len(s_w), len(s_l))
    zero = torch.zeros((), dtype=d_w.dtype)
    s_w = s_w + [zero] * (n - len(s_w))
    s_l = s_l + [zero] * (n - len(s_l))
    total = sum(-F.logsigmoid(beta * (w - l)) for w, l in zip(s_w, s_l))
    return total / n if reduction == "mean" else total


def random_batch(generator, batch=6, width_w=13, width_l=17, left_offset=True, dtype=torch.float64):
    """Responses of random lengths placed at random offsets (a prompt before, padding after)."""
    d_w = torch.randn(batch, width_w, generator=generator, dtype=dtype)
    d_l = torch.randn(batch, width_l, generator=generator, dtype=dtype)
    mask_w = torch.zeros(batch, width_w, dtype=torch.bool)
    mask_l = torch.zeros(batch, width_l, dtype=torch.bool)
    for mask, width in ((mask_w, width_w), (mask_l, width_l)):
        for b in range(batch):
            length = int(torch.randint(1, width + 1, (1,), generator=generator))
            start = int(torch.randint(0, width - length + 1, (1,), generator=generator)) if left_offset else 0
            mask[b, start : start + length] = True
    a_w = torch.rand(batch, width_w, generator=generator, dtype=dtype)
    a_l = torch.rand(batch, width_l, generator=generator, dtype=dtype)
    return d_w, d_l, mask_w, mask_l, a_w, a_l


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("length_mode", ["max", "min"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_independent_implementation(granularity, length_mode, reduction, weighted):
    # zlib.crc32, not hash(): Python salts str hashes per process, and a failing case must reproduce.
    g = torch.Generator().manual_seed(zlib.crc32(repr((granularity, length_mode, reduction, weighted)).encode()))
    d_w, d_l, mask_w, mask_l, a_w, a_l = random_batch(g)
    beta = 0.7
    loss, _ = preference_loss(
        d_w, d_l, mask_w, mask_l, beta=beta, granularity=granularity, length_mode=length_mode,
        reduction=reduction, chosen_weights=a_w if weighted else None, rejected_weights=a_l if weighted else None,
    )
    for b in range(d_w.shape[0]):
        ones_w, ones_l = torch.ones_like(d_w[b][mask_w[b]]), torch.ones_like(d_l[b][mask_l[b]])
        expected = reference_loss(
            d_w[b][mask_w[b]], d_l[b][mask_l[b]],
            a_w[b][mask_w[b]] if weighted else ones_w, a_l[b][mask_l[b]] if weighted else ones_l,
            beta, granularity, length_mode, reduction,
        )
        assert loss[b].item() == pytest.approx(expected.item(), abs=1e-10), (b, granularity)


def _loss(granularity, batch, **kw):
    d_w, d_l, mask_w, mask_l, a_w, a_l = batch
    return preference_loss(d_w, d_l, mask_w, mask_l, beta=0.3, granularity=granularity, **kw)[0]


@pytest.mark.parametrize("length_mode", ["max", "min"])
def test_identities_of_method_md(length_mode):
    g = torch.Generator().manual_seed(0)
    batch = random_batch(g, batch=16, width_w=21, width_l=9)
    d_w, d_l, mask_w, mask_l, a_w, a_l = batch
    dpo = _loss("sequence", batch, length_mode=length_mode)
    token = _loss("token", batch, length_mode=length_mode)
    max_len = max(mask_w.sum(-1).max().item(), mask_l.sum(-1).max().item())
    assert torch.allclose(_loss("adaptive:1", batch, length_mode=length_mode), dpo, atol=1e-6)
    assert torch.allclose(_loss("static:1", batch, length_mode=length_mode), token, atol=1e-6)
    assert torch.allclose(_loss(f"static:{max_len}", batch, length_mode=length_mode), dpo, atol=1e-6)
    assert torch.allclose(_loss(f"static:{max_len + 5}", batch, length_mode=length_mode), dpo, atol=1e-6)
    ones_w, ones_l = torch.ones_like(a_w), torch.ones_like(a_l)
    for gran, plain in (("sequence", dpo), ("token", token), ("adaptive:4", _loss("adaptive:4", batch))):
        if gran == "adaptive:4" and length_mode == "min":
            continue
        weighted = _loss(gran, batch, length_mode=length_mode, chosen_weights=ones_w, rejected_weights=ones_l)
        assert torch.allclose(weighted, plain, atol=1e-6)
    # DPO does not depend on how the tokens are cut, so it is also the granularity-free formula.
    direct = -F.logsigmoid(0.3 * ((d_w * mask_w).sum(-1) - (d_l * mask_l).sum(-1)))
    if length_mode == "max":
        assert torch.allclose(dpo, direct, atol=1e-12)


@pytest.mark.parametrize("granularity", ["token", "static:4", "adaptive:4", "adaptive:1"])
def test_at_the_reference_every_granularity_has_dpos_gradient(granularity):
    # Policy == reference: every segment margin is 0 and every log-sigmoid has slope 1/2, so d loss / d d_t is
    # -beta/2 on each chosen token and +beta/2 on each rejected one, as for DPO. ADPO and DPO part only as the
    # margins grow: why the toy study also runs beta = 1 (conf/experiment/toy_study_beta.yaml).
    g = torch.Generator().manual_seed(3)
    _, _, mask_w, mask_l, _, _ = random_batch(g, batch=8, width_w=17, width_l=11)

    def grads(gran, d_w, d_l):
        d_w, d_l = d_w.clone().requires_grad_(), d_l.clone().requires_grad_()
        loss, _ = preference_loss(d_w, d_l, mask_w, mask_l, beta=0.3, granularity=gran)
        loss.sum().backward()
        return d_w.grad, d_l.grad

    zero_w, zero_l = torch.zeros(mask_w.shape, dtype=torch.float64), torch.zeros(mask_l.shape, dtype=torch.float64)
    g_w, g_l = grads(granularity, zero_w, zero_l)
    assert torch.allclose(g_w, -0.15 * mask_w.double(), atol=1e-12)
    assert torch.allclose(g_l, 0.15 * mask_l.double(), atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip((g_w, g_l), grads("sequence", zero_w, zero_l)))
    # Away from the reference the segment losses weigh tokens differently (DPO itself is adaptive:1).
    d_w = torch.randn(mask_w.shape, generator=g, dtype=torch.float64) * 5
    d_l = torch.randn(mask_l.shape, generator=g, dtype=torch.float64) * 5
    moved = grads(granularity, d_w, d_l)[0]
    assert torch.allclose(moved, grads("sequence", d_w, d_l)[0]) == (granularity == "adaptive:1")


def test_hand_computed_token_level():
    # winner d = [1, 2, 3], loser d = [0.5, 4]: T' = 3, the loser contributes 0 at position 3.
    d_w = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    d_l = torch.tensor([[0.5, 4.0, 0.0]], dtype=torch.float64)
    mask_w = torch.tensor([[True, True, True]])
    mask_l = torch.tensor([[True, True, False]])
    beta = 0.5
    loss, metrics = preference_loss(d_w, d_l, mask_w, mask_l, beta=beta, granularity="token")
    expected = sum(-math.log(1 / (1 + math.exp(-beta * m))) for m in (0.5, -2.0, 3.0))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["segments/per_pair"].item() == 3
    assert metrics["segments/win_fraction"].item() == pytest.approx(2 / 3)
    # beta-scaled segment margins 0.25, -1, 1.5 and pair margin 0.75: none past SATURATED_MARGIN
    assert metrics["segments/saturated"].item() == 0 and metrics["rewards/saturated"].item() == 0
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * 6)
    assert metrics["rewards/rejected"].item() == pytest.approx(beta * 4.5)
    assert metrics["rewards/accuracies"].item() == 1.0
    # min mode: positions 1 and 2 only; mean reduction divides by 2.
    loss_min, _ = preference_loss(d_w, d_l, mask_w, mask_l, beta=beta, granularity="token", length_mode="min",
                                  reduction="mean")
    expected_min = sum(-math.log(1 / (1 + math.exp(-beta * m))) for m in (0.5, -2.0)) / 2
    assert loss_min.item() == pytest.approx(expected_min, rel=1e-12)


def test_saturated_pairs_and_segments_are_counted_past_the_margin():
    # beta 1: token margins 4, -1, 3.5 (two of three segments past 3); the pair's margin 6.5 is past 3, the second
    # pair's (margins 1, 1, 1; sum 3) is not: s(-3) is the slope where "saturated" starts.
    d_w = torch.tensor([[4.0, 0.0, 3.5], [1.0, 1.0, 1.0]], dtype=torch.float64)
    d_l = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.ones_like(d_w, dtype=torch.bool)
    _, metrics = preference_loss(d_w, d_l, mask, mask, beta=1.0, granularity="token")
    assert metrics["rewards/saturated"].tolist() == [1.0, 0.0]
    assert metrics["segments/saturated"].tolist() == pytest.approx([2 / 3, 0.0])
    _, sequence = preference_loss(d_w, d_l, mask, mask, beta=1.0, granularity="sequence")
    assert sequence["segments/saturated"].tolist() == sequence["rewards/saturated"].tolist() == [1.0, 0.0]


def test_hand_computed_adaptive_and_weights():
    # Winner of 5 tokens in 2 adaptive segments: [0, 1, 2] and [3, 4]; loser of 1 token: [0] and an empty segment.
    d_w = torch.tensor([[1.0, 1.0, 1.0, 2.0, 2.0]], dtype=torch.float64)
    d_l = torch.tensor([[3.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask_w = torch.ones(1, 5, dtype=torch.bool)
    mask_l = torch.tensor([[True, False, False, False, False]])
    a_l = torch.tensor([[0.5, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    loss, _ = preference_loss(d_w, d_l, mask_w, mask_l, beta=1.0, granularity="adaptive:2", rejected_weights=a_l)
    expected = -math.log(1 / (1 + math.exp(-(3.0 - 1.5)))) - math.log(1 / (1 + math.exp(-4.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_segment_ids_follow_tensor_split_and_offsets():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    ids = segment_ids(mask, parse_granularity("adaptive:3"))
    # 7 tokens into 3: sizes 3, 2, 2; 2 tokens into 3: sizes 1, 1, 0.
    assert ids.tolist() == [[-1, -1, 0, 0, 0, 1, 1, 2, 2, -1], [0, 1, -1, -1, -1, -1, -1, -1, -1, -1]]
    ids = segment_ids(mask, parse_granularity("static:3"))
    assert ids.tolist()[0] == [-1, -1, 0, 0, 0, 1, 1, 1, 2, -1]


@pytest.mark.parametrize("granularity", ["sequence", "token", "static:3", "adaptive:3"])
@pytest.mark.parametrize("length_mode", ["max", "min"])
def test_gradcheck(granularity, length_mode):
    g = torch.Generator().manual_seed(1)
    d_w, d_l, mask_w, mask_l, a_w, a_l = random_batch(g, batch=3, width_w=7, width_l=5)
    d_w.requires_grad_(True)
    d_l.requires_grad_(True)

    def fn(x_w, x_l):
        return preference_loss(x_w, x_l, mask_w, mask_l, beta=0.9, granularity=granularity, length_mode=length_mode,
                               rejected_weights=a_l)[0]

    assert torch.autograd.gradcheck(fn, (d_w, d_l))


def test_padding_gets_no_gradient_and_no_influence():
    g = torch.Generator().manual_seed(2)
    d_w, d_l, mask_w, mask_l, _, _ = random_batch(g, batch=4)
    noisy_w = torch.where(mask_w, d_w, torch.full_like(d_w, 1e6)).requires_grad_(True)
    loss = preference_loss(noisy_w, d_l, mask_w, mask_l, beta=0.1, granularity="static:4")[0]
    clean = preference_loss(d_w, d_l, mask_w, mask_l, beta=0.1, granularity="static:4")[0]
    assert torch.allclose(loss, clean)
    loss.sum().backward()
    assert torch.all(noisy_w.grad[~mask_w] == 0)


def test_bad_arguments_are_named():
    x = torch.zeros(1, 2)
    m = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="granularity 'static:0'"):
        preference_loss(x, x, m, m, beta=0.1, granularity="static:0")
    with pytest.raises(ValueError, match="length_mode"):
        preference_loss(x, x, m, m, beta=0.1, length_mode="mid")
    with pytest.raises(ValueError, match="reduction"):
        preference_loss(x, x, m, m, beta=0.1, reduction="avg")


def test_per_token_logps_matches_log_softmax():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(per_token_logps(logits, labels), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- segment losses

def test_unknown_segment_loss_names_the_key():
    d = torch.zeros(1, 3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="method.segment_loss.*'hinge'.*sigmoid"):
        preference_loss(d, d, mask, mask, beta=0.1, segment_loss="hinge")


@pytest.mark.parametrize("granularity", ["sequence", "token", "static:3", "adaptive:2"])
def test_a_registered_segment_loss_applies_to_every_paired_segment(granularity, monkeypatch):
    import adpo.losses as losses

    # A new objective is one registered function: here a hinge on the beta-scaled margin, checked against the
    # straight transcription with the link swapped.
    monkeypatch.setattr(losses, "SEGMENT_LOSSES", dict(losses.SEGMENT_LOSSES))

    @losses.segment_loss("hinge_for_test")
    def hinge(h, beta):
        return torch.relu(1 - beta * h)

    g = torch.Generator().manual_seed(7)
    d_w, d_l = torch.randn(1, 7, generator=g), torch.randn(1, 5, generator=g)
    m_w, m_l = torch.ones(1, 7, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)
    loss, _ = preference_loss(d_w, d_l, m_w, m_l, beta=0.5, granularity=granularity, segment_loss="hinge_for_test")

    gran = parse_granularity(granularity)
    ids_w, ids_l = segment_ids(m_w, gran, m_w.sum(-1))[0], segment_ids(m_l, gran, m_l.sum(-1))[0]
    n = int(max(ids_w.max(), ids_l.max())) + 1
    s_w = torch.zeros(n).index_add_(0, ids_w, d_w[0])
    s_l = torch.zeros(n).index_add_(0, ids_l, d_l[0])
    torch.testing.assert_close(loss[0], torch.relu(1 - 0.5 * (s_w - s_l)).sum())
    default, _ = preference_loss(d_w, d_l, m_w, m_l, beta=0.5, granularity=granularity)
    sigmoid, _ = preference_loss(d_w, d_l, m_w, m_l, beta=0.5, granularity=granularity, segment_loss="sigmoid")
    assert torch.equal(default, sigmoid) and not torch.allclose(default, loss)
