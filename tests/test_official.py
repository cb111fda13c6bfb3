"""wmhp's latent binarization against a transcription of the official code's step-2 ``HardBinaryConv``
(jorisquist/Understanding-WM-HP-in-BNNs, imagenet/step2/reactnet.py), forward values and weight gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
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


# --- Lighting (PCA colour) augmentation ------------------------------------------------------------------------
OFFICIAL_EIGVAL = np.asarray([0.2175, 0.0188, 0.0045])
OFFICIAL_EIGVEC = np.asarray([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


def test_lighting_adds_the_official_pca_increment() -> None:
    from bnn.data.imagenet import Lighting

    image = torch.rand(3, 5, 4, dtype=torch.float64)
    torch.manual_seed(7)
    out = Lighting(0.1)(image)
    torch.manual_seed(7)
    alpha = (torch.randn(3, dtype=torch.float64) * 0.1).numpy()
    increment = OFFICIAL_EIGVEC @ (alpha * OFFICIAL_EIGVAL)  # the official code's inc, without the uint8 cast
    np.testing.assert_allclose((out - image).numpy(), np.broadcast_to(increment[:, None, None], (3, 5, 4)),
                               rtol=0, atol=1e-12)  # fmt: skip
    assert np.abs(increment).max() > 0
    assert torch.equal(Lighting(0.0)(image), image)


def write_flat_colour_tree(root: Path, colours: dict[str, tuple[int, int, int]]) -> None:
    """Real JPEG and PNG files of one flat colour per class, so crops and flips leave the colour as is."""
    for split in ("train", "val"):
        for i, (name, colour) in enumerate(colours.items()):
            (root / split / name).mkdir(parents=True)
            array = np.broadcast_to(np.asarray(colour, dtype=np.uint8), (40, 48, 3)).copy()
            Image.fromarray(array).save(root / split / name / "a.png")
            Image.fromarray(array).save(root / split / name / "b.JPEG", quality=100)


def test_image_folder_training_transform_applies_lighting(tmp_path: Path) -> None:
    from bnn.config import DataConfig
    from bnn.data import load_data
    from bnn.data.imagenet import MEAN, STD

    colours = {"n0": (200, 60, 90), "n1": (40, 160, 220)}
    write_flat_colour_tree(tmp_path, colours)
    data = load_data(DataConfig(name="imagenet", root=str(tmp_path), num_workers=0), torch.device("cpu"),
                     torch.float64, seed=0)  # fmt: skip
    mean = torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(3, 1, 1)

    def increments(batches: list) -> np.ndarray:
        rows = []
        for x, y in batches:
            for image, label in zip(x, y):
                pixels = image * std + mean
                assert torch.allclose(pixels, pixels[:, :1, :1], atol=0.03)  # still one flat colour
                colour = torch.tensor(list(colours.values())[int(label)], dtype=torch.float64) / 255
                rows.append((pixels.mean(dim=(1, 2)) - colour).numpy())
        return np.stack(rows)

    train = increments(list(data.train_batches(1, 4)))
    # Each increment is eigvec @ (alpha * eigval): solve for alpha; a JPEG's rounding is < 2/255 per channel.
    alphas = np.linalg.solve(OFFICIAL_EIGVEC, train.T).T / OFFICIAL_EIGVAL
    assert np.abs(train).max() > 2.5 / 255  # some image moved beyond compression noise
    assert np.all(np.abs(alphas[:, 0]) < 0.6)  # the dominant component: within 6 alphastd
    assert len({round(float(a), 6) for a in alphas[:, 0]}) == len(alphas)  # fresh noise per image
    val = increments(list(data.test_batches(4)))
    assert np.abs(val).max() < 2.5 / 255  # no lighting at evaluation
    again = increments(list(data.train_batches(1, 4)))
    np.testing.assert_array_equal(again, train)  # (seed, epoch) fixes it
