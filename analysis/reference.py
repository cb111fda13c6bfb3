"""Published numbers the E8 table is set beside: every one in one place, with where it comes from."""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "shared/paper.md section 4 (settings known from the paper's official code and the cited papers)"


@dataclass(frozen=True)
class Reference:
    dataset: str  # bnn.config data.name
    optimizer: str  # bnn.config binary_opt.name the number was trained with
    top1: float  # top-1 test accuracy, percent
    what: str  # the model and training recipe behind the number
    source: str = SOURCE


REFERENCES: tuple[Reference, ...] = (
    Reference("imagenet", "adam", 69.4, "ReActNet-A, ReActNet two-step training"),
    Reference("imagenet", "adam", 70.5, "ReActNet-A, AdamBNN two-step training"),
    Reference("cifar10", "bop", 91.3, "BinaryNet, Bop paper (Helwegen et al. 2019)"),
)


def references_for(dataset: str, optimizer: str) -> list[Reference]:
    return [r for r in REFERENCES if r.dataset == dataset and r.optimizer == optimizer]
