"""Mixed precision for training (training/precision.py)."""
import pytest
import torch

from twinserve.training import precision


def test_resolve_and_autocast():
    assert precision.resolve("fp32") == "fp32" and precision.resolve("bf16") == "bf16"
    assert precision.resolve("auto") == ("bf16" if precision.bf16_is_fast() else "fp32")
    with pytest.raises(ValueError, match="unknown precision"):
        precision.resolve("fp16")
    layer, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    with precision.autocast("bf16"):
        assert layer(x).dtype == torch.bfloat16
    with precision.autocast("fp32"):
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # master weights stay fp32


def test_bf16_forward_is_close_to_fp32():
    """A bf16 forward pass of a twin agrees with fp32 within bf16's precision (relative 5%)."""
    from twinserve.benchmarks.twins import random_twin

    twin = random_twin("tiny", {"a": 20}).eval()
    torch.manual_seed(0)
    video, behavior, pupil = torch.rand(1, 30, 36, 64) * 255, torch.randn(1, 30, 2), torch.randn(1, 30, 2)
    with torch.no_grad():
        reference = twin.rates("a", video, behavior, pupil)
        with precision.autocast("bf16"):
            low = twin.rates("a", video, behavior, pupil).float()
    assert torch.allclose(low, reference, rtol=0.05, atol=0.05 * reference.abs().mean().item())
