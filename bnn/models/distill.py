"""Knowledge distillation for ReActNet-A: a frozen torchvision ResNet-34 teacher and ReActNet's distribution loss."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bnn.config import ConfigError, ModelConfig


class FrozenTeacher(nn.Module):
    """Wraps the teacher so that it stays in eval mode (BatchNorm running stats fixed) whatever .train() says."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_teacher(cfg: ModelConfig, num_classes: int) -> nn.Module | None:
    """The frozen ResNet-34 whose weights are in ``cfg.teacher_path``; None when no teacher is configured."""
    if cfg.teacher_path is None:
        return None
    import torchvision

    path = Path(cfg.teacher_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.teacher_path: no file at {str(path)!r}; give a torchvision ResNet-34 state_dict saved with "
            f"torch.save(model.state_dict(), path), or null to train with plain cross-entropy"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise ConfigError(f"model.teacher_path: {str(path)!r} is not a readable torch checkpoint ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"model.teacher_path: {str(path)!r} holds a {type(state).__name__}, not a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel / DDP
    net = torchvision.models.resnet34(weights=None, num_classes=num_classes)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_lines = "; ".join(str(exc).splitlines()[:3])
        raise ConfigError(
            f"model.teacher_path: {str(path)!r} is not a ResNet-34 state_dict for {num_classes} classes "
            f"({first_lines})"
        ) from None
    return FrozenTeacher(net)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """ReActNet's distribution loss: mean over the batch of -sum_c softmax(teacher)_c * log_softmax(student)_c.

    Equal to KL(teacher || student) plus the teacher's entropy, which has no gradient; the teacher's logits are
    detached so that no gradient reaches the teacher.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher_logits: expected shape {tuple(student_logits.shape)} like student_logits, "
            f"got {tuple(teacher_logits.shape)}"
        )
    target = F.softmax(teacher_logits.detach(), dim=1)
    return -(target * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()
