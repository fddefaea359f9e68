"""Every random choice in a run derives from (run seed, cycle, stage), so a resumed run redraws
exactly what an uninterrupted run would have drawn."""

from __future__ import annotations

import hashlib
import random


def derive_seed(run_seed: int, cycle: int, stage: str) -> int:
    digest = hashlib.sha256(f"{run_seed}:{cycle}:{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
