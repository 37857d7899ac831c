"""Where zoft keeps files between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """zoft's cache folder: ``$ZOFT_CACHE`` if set, else ``~/.cache/zoft`` (converted models,
    built kernels)."""
    return Path(os.environ.get("ZOFT_CACHE") or "~/.cache/zoft").expanduser()
