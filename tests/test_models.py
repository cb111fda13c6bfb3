"""bnn.models: forward/backward at the real input sizes, binary parameter counts from the architectures, the two
weight modes, scaling, determinism, and ReActNet's distillation teacher and loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision

from bnn.binarize import sign
from bnn.config import ConfigError, ModelConfig
from bnn.layers import BinaryConv2d, BinaryLinear, binary_layers, split_parameters
from bnn.models import build_model
from bnn.models.activations import SignActivation
from bnn.models.distill import build_teacher, distillation_loss
from bnn.models.reactnet import BLOCK_WIDTHS, STEM_WIDTH

# name -> (input shape, classes, batch): the real sizes of each model's dataset.
REAL_SIZES = {
    "mlp": ((1, 28, 28), 10, 8),
    "resnet20": ((3, 32, 32), 10, 4),
    "reactnet_a": ((3, 224, 224), 1000, 2),
}


def expected_binary_weights(
    name: str, hidden: tuple[int, ...] = (512, 512, 512), in_features: int = 784
) -> list[tuple[int, ...]]:
    """Shapes of the binary weights, written out from the published architectures (the MLP's binary first layer
    BinaryNet style)."""
    if name == "mlp":
        return [(hidden[0], in_features)] + [(b, a) for a, b in zip(hidden[:-1], hidden[1:])]
    if name == "resnet20":
        shapes, c_in = [], 16
        for width in (16, 32, 64):
            for _ in range(3):
                shapes += [(width, c_in, 3, 3), (width, width, 3, 3)]
                c_in = width
        return shapes
    channels = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    shapes = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        shapes.append((c_in, c_in, 3, 3))
        shapes += [(c_in, c_in, 1, 1)] * (c_out // c_in)
    return shapes


def build(name: str, weight_mode: str = "latent", seed: int = 0, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    shape, classes, _ = REAL_SIZES[name]
    return build_model(ModelConfig(name=name, **cfg), weight_mode, classes, shape)


@pytest.mark.parametrize("weight_mode", ["latent", "binary"])
@pytest.mark.parametrize("name", list(REAL_SIZES))
def test_forward_backward_at_real_input_size(name: str, weight_mode: str) -> None:
    model = build(name, weight_mode)
    shape, classes, batch = REAL_SIZES[name]
    logits = model(torch.randn(batch, *shape))
    assert logits.shape == (batch, classes)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.arange(batch) % classes).backward()
    binary, real = split_parameters(model)
    for p in binary + real:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    # Every binary weight gets a learning signal (dead layers would show up as all-zero gradients).
    assert all(p.grad.abs().sum() > 0 for p in binary)


@pytest.mark.parametrize("name", list(REAL_SIZES))
def test_binary_parameters_match_the_architecture(name: str) -> None:
    model = build(name)
    shapes = [tuple(layer.weight.shape) for _, layer in binary_layers(model)]
    assert shapes == expected_binary_weights(name)
    binary, real = split_parameters(model)
    assert sum(p.numel() for p in binary) == sum(torch.Size(s).numel() for s in shapes)
    # What is not binary: the real first and last layers, BatchNorm, PReLU and shifts.
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in real) == n_params - sum(p.numel() for p in binary)


def test_reactnet_a_has_13_blocks_at_the_published_widths() -> None:
    model = build("reactnet_a")
    assert len(model.blocks) == 13
    assert STEM_WIDTH == 32 and BLOCK_WIDTHS[-1] == 1024
    # 224 -> 7: the stem and the four stride-2 blocks halve the resolution.
    strides = [block.conv3x3.stride[0] for block in model.blocks]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]


def test_mlp_hidden_widths() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden=(64, 32, 16, 8)), "latent", 10, (1, 8, 8))
    assert [tuple(layer.weight.shape) for _, layer in binary_layers(model)] == expected_binary_weights(
        "mlp", (64, 32, 16, 8), in_features=64
    )
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert isinstance(model.layers.fc_in, BinaryLinear)  # binary first layer on the flattened real input
    real_first = build_model(ModelConfig(name="mlp", hidden=(64, 32), first_layer="real"), "latent", 10, (1, 8, 8))
    assert [name for name, _ in binary_layers(real_first)] == ["layers.fc1"]
    assert type(real_first.layers.fc_in) is torch.nn.Linear


@pytest.mark.parametrize("name", list(REAL_SIZES))
def test_binary_mode_weights_are_exactly_pm1(name: str) -> None:
    model = build(name, "binary")
    layers = binary_layers(model)
    assert layers and all(layer.weight_mode == "binary" for _, layer in layers)
    for _, layer in layers:
        assert torch.equal(layer.weight.abs(), torch.ones_like(layer.weight))


def test_binary_layers_start_at_the_sign_of_the_default_init() -> None:
    """Layer-side: a binary-mode layer is valid for the sign-flip optimizers as built; latent ones stay real."""
    makers = (lambda mode: BinaryLinear(7, 5, weight_mode=mode), lambda mode: BinaryConv2d(3, 4, 3, weight_mode=mode))
    for make in makers:
        torch.manual_seed(0)
        latent = make("latent")
        torch.manual_seed(0)
        binary = make("binary")
        assert not torch.equal(latent.weight.abs(), torch.ones_like(latent.weight))
        assert torch.equal(binary.weight, sign(latent.weight))


@pytest.mark.parametrize("weight_ste", ["identity", "clipped"])
@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_latent_and_binary_modes_compute_the_same_network(name: str, weight_ste: str) -> None:
    """Binary mode with b = sign(w) gives the latent model's outputs and, through the STE, its gradients."""
    latent = build(name, "latent", weight_ste=weight_ste).double()
    with torch.no_grad():  # latent weights on both sides of the clipping threshold
        for _, layer in binary_layers(latent):
            layer.weight.mul_(torch.rand_like(layer.weight) * 40)
    binary = build(name, "binary", weight_ste=weight_ste).double()
    state = latent.state_dict()
    for layer_name, _ in binary_layers(latent):
        state[f"{layer_name}.weight"] = sign(state[f"{layer_name}.weight"])
    binary.load_state_dict(state)

    shape, classes, batch = REAL_SIZES[name]
    x = torch.randn(batch, *shape, dtype=torch.float64)
    y = torch.arange(batch) % classes
    out_latent, out_binary = latent(x), binary(x)
    assert torch.equal(out_latent, out_binary)
    F.cross_entropy(out_latent, y).backward()
    F.cross_entropy(out_binary, y).backward()
    for (_, lat), (_, bin_) in zip(binary_layers(latent), binary_layers(binary)):
        expected = bin_.weight.grad
        if weight_ste == "clipped":
            expected = expected * (lat.weight.abs() <= 1)
        assert torch.equal(lat.weight.grad, expected)
    for p_lat, p_bin in zip(split_parameters(latent)[1], split_parameters(binary)[1]):
        assert torch.equal(p_lat.grad, p_bin.grad)


@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_scaling_multiplies_each_output_channel_by_its_mean_magnitude(name: str) -> None:
    scaled = build(name, scaling=True).double()
    for _, layer in binary_layers(scaled):
        assert layer.scaling
        w = layer.weight
        dims = tuple(range(1, w.dim()))
        expected = sign(w) * w.abs().mean(dim=dims, keepdim=True)
        assert torch.equal(layer.binary_weight(), expected)
    # ... and the forward pass uses it. In eval mode, with BatchNorm statistics and shifts away from their initial
    # 0, the per-channel scale is not normalised away before the next sign.
    with torch.no_grad():
        for bn in scaled.modules():
            if isinstance(bn, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                bn.running_mean.normal_()
                bn.bias.normal_()
    plain = build(name, scaling=False).double()
    plain.load_state_dict(scaled.state_dict())
    x = torch.randn(4, *REAL_SIZES[name][0], dtype=torch.float64)
    assert not torch.allclose(scaled.eval()(x), plain.eval()(x))


def test_scaling_is_refused_for_true_binary_weights() -> None:
    with pytest.raises(ConfigError, match="model.scaling"):
        build("mlp", "binary", scaling=True)


@pytest.mark.parametrize("name", list(REAL_SIZES))
def test_ste_settings_reach_every_layer(name: str) -> None:
    model = build(name, weight_ste="clipped", activation_ste="clipped")
    assert all(layer.weight_ste == "clipped" for _, layer in binary_layers(model))
    activations = [m for m in model.modules() if isinstance(m, SignActivation)]
    assert activations and all(m.ste == "clipped" for m in activations)


@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_models_are_deterministic_given_the_seed(name: str) -> None:
    first, again, other = build(name, seed=3).state_dict(), build(name, seed=3).state_dict(), build(name, seed=4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], v) for k, v in other.state_dict().items() if v.is_floating_point())


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="weight_mode"):
        build_model(ModelConfig(), "ternary", 10, (1, 8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        build_model(ModelConfig(), "latent", 1, (1, 8, 8))
    with pytest.raises(ConfigError, match="model.hidden"):
        build_model(ModelConfig(hidden=(512,)), "latent", 10, (1, 8, 8))
    with pytest.raises(ValueError, match="input_shape"):
        build_model(ModelConfig(name="reactnet_a"), "latent", 10, (3, 16, 16))
    with pytest.raises(ValueError, match="input_shape"):
        build_model(ModelConfig(name="resnet20"), "latent", 10, (784,))


# --- distillation -------------------------------------------------------------------------------------------
def test_no_teacher_without_a_path() -> None:
    assert build_teacher(ModelConfig(name="reactnet_a"), 10) is None


def test_missing_teacher_file_names_the_field(tmp_path) -> None:
    cfg = ModelConfig(name="reactnet_a", teacher_path=str(tmp_path / "resnet34.pt"))
    with pytest.raises(ConfigError, match="model.teacher_path.*resnet34.pt"):
        build_teacher(cfg, 10)


def test_wrong_teacher_weights_name_the_field(tmp_path) -> None:
    path = tmp_path / "not_resnet34.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ConfigError, match="model.teacher_path.*ResNet-34"):
        build_teacher(ModelConfig(name="reactnet_a", teacher_path=str(path)), 10)


def test_teacher_loads_the_resnet34_weights_frozen_in_eval_mode(tmp_path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet34(weights=None, num_classes=10).eval()
    path = tmp_path / "resnet34.pt"
    # As saved from DataParallel: the "module." prefix is accepted.
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)
    teacher = build_teacher(ModelConfig(name="reactnet_a", teacher_path=str(path)), 10)
    assert teacher is not None
    teacher.train()  # the training loop's model.train() must not unfreeze BatchNorm statistics
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher(x), reference(x))


def test_distillation_loss_is_soft_cross_entropy_to_the_teacher() -> None:
    torch.manual_seed(0)
    student = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    loss = distillation_loss(student, teacher)
    p_teacher = torch.softmax(teacher.detach(), 1)
    expected = -(p_teacher * torch.log_softmax(student.detach(), 1)).sum(1).mean()
    assert torch.allclose(loss, expected, rtol=1e-14, atol=0)
    loss.backward()
    # d/ds of the soft cross-entropy: (softmax(s) - p_teacher) / batch; nothing flows into the teacher.
    assert torch.allclose(student.grad, (torch.softmax(student.detach(), 1) - p_teacher) / 6, rtol=0, atol=1e-15)
    assert teacher.grad is None
    # A one-hot teacher gives plain cross-entropy.
    labels = torch.arange(6) % 10
    one_hot = F.one_hot(labels, 10).double() * 1e4
    assert torch.allclose(distillation_loss(student, one_hot), F.cross_entropy(student, labels), rtol=1e-14)
    with pytest.raises(ValueError, match="teacher_logits"):
        distillation_loss(student, teacher[:, :5])


def test_model_config_fields_used_here_exist() -> None:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert {"name", "hidden", "weight_ste", "activation_ste", "scaling", "teacher_path"} <= names
