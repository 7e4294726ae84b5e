"""The ternary quantizer (pinned to BitNet b1.58's absmean RoundClip by hand-computed vectors) and ternary checks."""

import pytest
import torch

from npuport.weights.ternary import check_scratch, detect_group_size, fake_quant, groups_are_ternary


def float_reference(weight, group_size):
    """The definition: per group, every value is 0, +a or -a for the group's finite max |w| = a."""
    w = weight.float().reshape(weight.shape[0], -1, group_size)
    a = w.abs().amax(dim=-1, keepdim=True)
    return ((w == 0) | (w == a) | (w == -a)).all(dim=-1) & a[..., 0].isfinite()


@pytest.mark.parametrize("with_scratch", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_bit_pattern_check_equals_the_float_definition(dtype, with_scratch):
    generator = torch.Generator().manual_seed(0)
    scratch = check_scratch(torch.empty(0, dtype=dtype), 6 * 64 + 5) if with_scratch else None  # larger, reused
    for trial in range(50):
        latent = torch.randn(6, 64, generator=generator)
        weight = fake_quant(latent, 16).to(dtype)
        flip = torch.rand(6, 64, generator=generator) < 0.02 * (trial % 3)  # some groups broken, some not
        weight[flip] = weight[flip] * (1.5 if trial % 2 else 0.5)  # larger and smaller than the group's a
        weight[0, 0] = -0.0
        weight[1] = 0.0  # all-zero groups
        weight[2, :16] = -0.0
        weight[3, 16] = torch.finfo(dtype).tiny  # smallest normal beside zeros
        before = weight.clone()
        assert torch.equal(groups_are_ternary(weight, 16, scratch), float_reference(weight, 16))
        assert torch.equal(weight.view(torch.uint8), before.view(torch.uint8))  # the check never writes the weight


def test_non_finite_groups_are_not_ternary():
    weight = torch.zeros(2, 8, dtype=torch.bfloat16)
    weight[0, :2] = float("inf")
    weight[1, 0] = float("nan")
    assert groups_are_ternary(weight, 8).tolist() == [[False], [False]]


def test_group_size_detected_from_fused_weights():
    weight = fake_quant(torch.randn(4, 256), 64).to(torch.bfloat16)
    assert detect_group_size(weight) == 64
    assert detect_group_size(torch.randn(4, 256)) is None


# --- the quantizer pinned to an independent definition ----------------------------------------------------------
#
# BitNet b1.58 (Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
# arXiv:2402.17764, eqs. 1-3): absmean quantization, gamma = mean |W|, W~ = RoundClip(W / (gamma + eps), -1, 1),
# RoundClip(x, a, b) = max(a, min(b, round(x))). The released BitNet training code ("The Era of 1-bit LLMs:
# Training Tips, Code and FAQ", Microsoft, 2024) floors the scale instead: scale = mean|W|.clamp(min=1e-5); so does
# npuport (eps 1e-5), and the dequantized weight is the ternary value times that scale. BitCPM-CANN's released
# weights are described as ternary per 128 input channels with an absmean scale (seed-report-summary.md: "per group
# g of a linear weight: s = max(mean|W_g|, eps), W_q = clamp(round(W_g / s), -1, 1) * s"); hence groups of 128.
# Rounding: torch.round rounds half to even, so W / s = +-0.5 gives 0 (half away from zero would give +-1) and
# +-1.5 gives +-2, clipped to +-1. Every expected value below is computed by hand, in exactly representable numbers.

EPS32 = float(torch.tensor(1e-5))  # the eps floor as float32 holds it

HAND_VECTORS = [
    # (group, expected): the group's scale s = mean |w| in the comment
    ([0.5, -0.5, 1.5, -1.5], [0.0, 0.0, 1.0, -1.0]),  # s = 1: ties at +-0.5 go to 0 (half to even)
    ([1.0, 2.0, -3.0, 0.0], [1.5, 1.5, -1.5, 0.0]),  # s = 1.5: 2/3 -> 1, 4/3 -> 1, -2 -> -2 clipped to -1
    ([0.25, 0.25, -0.25, 7.25], [0.0, 0.0, 0.0, 2.0]),  # s = 2: one outlier inflates s, the small ones become 0
    ([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]),  # s = 0 floored at eps: zeros, no NaN
    ([1e-6, -1e-6, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]),  # s = 5e-7 floored at 1e-5: w/s = +-0.1 -> 0
    ([0.25, -0.75, 0.75, 0.25], [0.0, -0.5, 0.5, 0.0]),  # s = 0.5: +-0.5 -> 0, +-1.5 -> +-2 -> +-1
    # s = 2^-19 floored at eps: 2^-17 / eps = 0.76 -> 1, dequantized with the floored scale: eps (gamma + eps
    # instead of the floor would give 2^-19)
    ([2.0**-17, 0.0, 0.0, 0.0], [EPS32, 0.0, 0.0, 0.0]),
]


@pytest.mark.parametrize(("group", "expected"), HAND_VECTORS)
def test_fake_quant_is_bitnet_absmean_roundclip(group, expected):
    for dtype in (torch.float32, torch.bfloat16):  # every value above is exact in bfloat16 too
        result = fake_quant(torch.tensor([group], dtype=dtype), 4)
        assert result.dtype == torch.float32
        assert result[0].tolist() == expected, dtype


def test_groups_of_128_input_channels_each_have_their_own_scale():
    row = torch.zeros(1, 256)
    row[0, :64], row[0, 64:128] = 0.5, -1.5  # group 1: s = (64 x 0.5 + 64 x 1.5) / 128 = 1 -> 0 and -1
    row[0, 130], row[0, 200] = 0.25, 127.75  # group 2: s = 128 / 128 = 1; 0.25 -> 0, the outlier -> 1
    expected = torch.zeros(1, 256)
    expected[0, 64:128] = -1.0
    expected[0, 200] = 1.0
    assert torch.equal(fake_quant(row, 128), expected)
    row[0, 128:] *= 2  # group 2 alone is scaled: its s = 2, the outlier -> 1 x 2 = 2; group 1 is unchanged
    expected[0, 200] = 2.0
    assert torch.equal(fake_quant(row, 128), expected)


def test_small_groups_are_floored_at_eps_not_blown_up():
    weight = torch.full((1, 128), 1e-6)
    weight[0, ::2] = -1e-6  # s = 1e-6 < eps = 1e-5: w / eps = +-0.1 -> 0 (without the floor: +-1 x 1e-6)
    assert torch.equal(fake_quant(weight, 128), torch.zeros(1, 128))
    assert not fake_quant(torch.zeros(2, 128), 128).isnan().any()


def _wrong_quantizers():
    """Plausible mistakes, each must fail the pinned vectors."""

    def absmax(w, g):  # 0.7 x absmax scale instead of absmean
        w = w.float().reshape(w.shape[0], -1, g)
        s = (0.7 * w.abs().amax(-1, keepdim=True)).clamp(min=1e-5)
        return (torch.clamp(torch.round(w / s), -1, 1) * s).reshape(w.shape[0], -1)

    def half_away(w, g):  # round half away from zero
        w = w.float().reshape(w.shape[0], -1, g)
        s = w.abs().mean(-1, keepdim=True).clamp(min=1e-5)
        r = torch.sign(w / s) * torch.floor((w / s).abs() + 0.5)
        return (torch.clamp(r, -1, 1) * s).reshape(w.shape[0], -1)

    def eps_added(w, g):  # the paper's gamma + eps, and no floor
        w = w.float().reshape(w.shape[0], -1, g)
        s = w.abs().mean(-1, keepdim=True)
        return (torch.clamp(torch.round(w / (s + 1e-5)), -1, 1) * s).reshape(w.shape[0], -1)

    def per_row(w, g):  # one scale per output row instead of per group
        return fake_quant(w, w.shape[1])

    return {"0.7 absmax": absmax, "half away from zero": half_away, "gamma + eps": eps_added, "per row": per_row}


@pytest.mark.parametrize("name", list(_wrong_quantizers()))
def test_the_pinned_vectors_reject_plausible_wrong_quantizers(name):
    wrong = _wrong_quantizers()[name]
    failures = sum(wrong(torch.tensor([g]), 4)[0].tolist() != e for g, e in HAND_VECTORS)
    row = torch.zeros(1, 256)
    row[0, :64], row[0, 64:128], row[0, 130], row[0, 200] = 0.5, -1.5, 0.25, 255.5  # group 2: s = 2
    failures += not torch.equal(wrong(row, 128), fake_quant(row, 128))
    assert failures > 0, name
