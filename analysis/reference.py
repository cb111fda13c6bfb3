"""Published numbers the E8 table is set beside: every one in one place, with its model, its training steps,
its dataset and where it comes from.

A reference is set beside a result only when dataset, model *and* optimizer match (``references_for``), so a
VGG-style BinaryNet number is never drawn next to a ResNet-20 result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SOURCE = "shared/paper.md section 4 (settings known from the paper's official code and the cited papers)"


@dataclass(frozen=True)
class Reference:
    dataset: str  # bnn.config data.name
    model: str  # bnn.config model.name it compares with; a name wmhp has no model for is never set beside a result
    optimizer: str  # bnn.config binary_opt.name the number was trained with
    steps: Literal["one-step", "two-step"]  # two-step: real weights + binary activations first, then both binary
    top1: float  # top-1 test accuracy, percent
    what: str  # the model and training recipe behind the number
    source: str = SOURCE


REFERENCES: tuple[Reference, ...] = (
    Reference("imagenet", "reactnet_a", "adam", "two-step", 69.4, "ReActNet-A, ReActNet two-step training",
              "Liu et al. 2020, ReActNet (ECCV), via shared/paper.md section 4"),
    Reference("imagenet", "reactnet_a", "adam", "two-step", 70.5, "ReActNet-A, AdamBNN two-step training",
              "Liu et al. 2021, How do Adam and training strategies help BNNs optimization? (ICML), "
              "via shared/paper.md section 4"),
    Reference("cifar10", "resnet20", "sgd", "one-step", 86.5, "ResNet-20 1/1, IR-Net one-step training",
              "Qin et al. 2020, Forward and Backward Information Retention for Accurate Binary Neural Networks "
              "(CVPR), ResNet-20 W1/A1 on CIFAR-10"),
    Reference("cifar10", "binarynet_vgg", "bop", "one-step", 91.3, "VGG-style BinaryNet, Bop paper one-step",
              "Helwegen et al. 2019, Latent Weights Do Not Exist (NeurIPS), via shared/paper.md section 4; "
              "not a wmhp model, so never set beside a ResNet-20 result"),
)  # fmt: skip


def model_of_label(label: str) -> str:
    """analysis' ``model.label`` ("mlp 256-256", "resnet20") -> bnn.config model.name."""
    return str(label).split(" ", 1)[0]


def references_for(dataset: str, optimizer: str | None = None, model: str | None = None) -> list[Reference]:
    """The references of ``dataset`` and ``model`` (a model.name or model.label), optionally of one optimizer.

    ``model`` None matches no model-specific reference at all: a number is only set beside its own model."""
    if model is None:
        return []
    name = model_of_label(model)
    return [r for r in REFERENCES if r.dataset == dataset and r.model == name
            and (optimizer is None or r.optimizer == optimizer)]  # fmt: skip
