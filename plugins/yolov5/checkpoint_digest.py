"""What names an ultralytics checkpoint in a benchmark's results: its weights, not its bytes.

A checkpoint file also holds the date it was written and the paths it was
trained from, so two trainings that give the same weights (a fine-tune is
bit-for-bit repeatable on one machine) are two different files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def weights_digest(weights: str | Path) -> str:
    """16 hex of sha256 over the model's parameters and buffers (names, dtypes, shapes, values), in state-dict order."""
    import torch

    from .checkpoints import checkpoint_model

    digest = hashlib.sha256()
    for name, tensor in checkpoint_model(weights).state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
