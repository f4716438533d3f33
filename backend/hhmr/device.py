"""Which torch device a command runs on."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """"auto": CUDA when present, else the CPU; "cuda" fails clearly without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available")
    return torch.device(name)
