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
