"""Where HHMR finds its shipped assets and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def weights_dir() -> Path:
    """The `weights/` folder: `$HHMR_WEIGHTS`, else the repository's own (editable install)."""
    env = os.environ.get("HHMR_WEIGHTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "weights"


def cache_dir() -> Path:
    """A writable cache folder: `$HHMR_CACHE`, else `~/.cache/hhmr`."""
    env = os.environ.get("HHMR_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "hhmr"
    path.mkdir(parents=True, exist_ok=True)
    return path
