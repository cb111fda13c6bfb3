"""E8's published references: each names its model, training steps, dataset and source, and is set beside
results of the same dataset and model only."""

from __future__ import annotations

from analysis.reference import REFERENCES, references_for
from bnn.config import ModelConfig, DataConfig, BinaryOptConfig
from typing import get_args, get_type_hints


def test_every_reference_states_model_steps_dataset_and_source() -> None:
    datasets = get_args(get_type_hints(DataConfig)["name"])
    optimizers = get_args(get_type_hints(BinaryOptConfig)["name"])
    for r in REFERENCES:
        assert r.dataset in datasets and r.optimizer in optimizers
        assert r.model and r.steps in ("one-step", "two-step") and r.source and 0 < r.top1 < 100


def test_references_match_model_and_dataset() -> None:
    models = get_args(get_type_hints(ModelConfig)["name"])
    # ResNet-20 on CIFAR-10 gets ResNet-20's own number, never the VGG-style BinaryNet's 91.3 %.
    resnet = references_for("cifar10", None, "resnet20")
    assert [(r.model, r.top1) for r in resnet] == [("resnet20", 86.5)]
    assert references_for("cifar10", "bop", "resnet20") == []
    assert references_for("cifar10", "sgd", "mlp 256-256") == []
    vgg = [r for r in REFERENCES if r.top1 == 91.3]
    assert len(vgg) == 1 and "VGG" in vgg[0].what and vgg[0].model not in models
    imagenet = references_for("imagenet", "adam", "reactnet_a")
    assert sorted(r.top1 for r in imagenet) == [69.4, 70.5] and {r.steps for r in imagenet} == {"two-step"}
    assert references_for("imagenet", "adam", None) == []
