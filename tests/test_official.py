"""wmhp's latent binarization against a transcription of the official code's step-2 ``HardBinaryConv``
(jorisquist/Understanding-WM-HP-in-BNNs, imagenet/step2/reactnet.py), forward values and weight gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bnn.config import ModelConfig
from bnn.layers import BinaryConv2d, binary_layers
from bnn.models import build_model


def official_hard_binary_conv(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """The official latent path, rewritten step by step: scale = mean over (in, kh, kw) of |w|, detached;
    value scale * sign(w); gradient through clamp(w, -1, 1)."""
    scale = weight.abs().mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True).detach()
    no_grad = scale * torch.sign(weight)
    clipped = torch.clamp(weight, -1.0, 1.0)
    binary = no_grad.detach() - clipped.detach() + clipped
    return F.conv2d(x, binary, stride=stride, padding=padding)


def test_reactnet_estimator_matches_the_official_layer_forward_and_backward() -> None:
    g = torch.Generator().manual_seed(0)
    # Magnitudes on both sides of 1 (so the clamp matters) and no exact zeros (torch.sign(0) = 0 there).
    weight = (torch.rand(6, 4, 3, 3, generator=g, dtype=torch.float64) * 3 - 1.5)
    weight = torch.where(weight.abs() < 1e-3, torch.full_like(weight, 0.5), weight)
    x = torch.randn(2, 4, 7, 7, generator=g, dtype=torch.float64)
    upstream = torch.randn(2, 6, 4, 4, generator=g, dtype=torch.float64)

    ours = BinaryConv2d(4, 6, 3, stride=2, padding=1, weight_ste="reactnet").double()
    with torch.no_grad():
        ours.weight.copy_(weight)
    y = ours(x)
    (y * upstream).sum().backward()

    w_ref = weight.clone().requires_grad_(True)
    y_ref = official_hard_binary_conv(x, w_ref, stride=2, padding=1)
    (y_ref * upstream).sum().backward()

    assert torch.equal(torch.sign(ours.binary_weight().detach()), torch.sign(weight))  # no sign mismatch
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.weight.grad, w_ref.grad, rtol=1e-12, atol=1e-12)
    assert (ours.weight.grad[weight.abs() > 1] == 0).all() and (ours.weight.grad[weight.abs() <= 1] != 0).any()
    # The former "clipped + scaling" path multiplies the gradient by the scale: it must differ from the official.
    scaled = BinaryConv2d(4, 6, 3, stride=2, padding=1, weight_ste="clipped", scaling=True).double()
    with torch.no_grad():
        scaled.weight.copy_(weight)
    (scaled(x) * upstream).sum().backward()
    assert not torch.allclose(scaled.weight.grad, w_ref.grad)


def test_imagenet_preset_latent_layers_use_the_official_estimator() -> None:
    from pipeline.grids import load_scales

    assert load_scales()["imagenet"]["model.weight_ste"] == "reactnet"
    model = build_model(ModelConfig(name="resnet20", weight_ste="reactnet"), "latent", 10, (3, 8, 8))
    assert all(layer.weight_ste == "reactnet" for _, layer in binary_layers(model))
