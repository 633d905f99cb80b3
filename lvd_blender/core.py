"""Access to lvd_core (vendored inside the packaged extension, the top-level package in the development tree)
and to the optional PyTorch install. Nothing here imports torch: that happens on first use, in a fit."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

# The packaged extension carries lvd_core as the subpackage `vendor.lvd_core` (extensions may not load
# top-level modules from their folder); the development tree imports the top-level package.
CORE_PACKAGE = f"{__package__}.vendor.lvd_core" if (Path(__file__).parent / "vendor" / "lvd_core").is_dir() else "lvd_core"


def core(module: str):
    """The lvd_core submodule `module` (e.g. "export"), imported on first use."""
    return importlib.import_module(f"{CORE_PACKAGE}.{module}")


def add_dependency_folders(folders) -> None:
    """Make PyTorch installed in `folders` (existing site-packages folders) importable."""
    for folder in folders:
        if folder and Path(folder).is_dir() and str(folder) not in sys.path:
            sys.path.append(str(folder))


def torch_available() -> bool:
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def cuda_status() -> str:
    """One line for the preferences: CUDA's state when torch is already loaded, without loading it."""
    if "torch" not in sys.modules:
        return "CUDA: checked when the first fit loads PyTorch"
    torch = sys.modules["torch"]
    return f"CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CUDA: not available (CPU)"
