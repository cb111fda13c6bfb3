"""What a training run produces, by name: the per-epoch metrics it reports and its checkpoint file.

Torch-free, so that the stored-results contract (wmhp.contract) can name them without importing torch.
"""

from __future__ import annotations

CHECKPOINT_FILE = "state.pt"  # in the checkpoint directory handed to bnn.train.train
FLIPS_PREFIX = "flips."  # one "flips.<layer>" metric per binary layer, besides METRIC_NAMES

# The per-epoch metrics every run reports.
METRIC_NAMES = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "flip_ratio", "sign_agreement_init",
    "init_forget_step", "lr", "alpha", "gamma", "real_lr", "epoch_s", "steps", "sign_hash",
)  # fmt: skip
