"""The modules a fit needs and where they come from. Nothing here imports torch: that happens in the fitting
process (lvd_blender.worker).

The extension's modules import lvd_core as `from lvd_core... import ...`, inside the functions that need it; the
packaged extension carries lvd_core as its subpackage `vendor.lvd_core` (extensions may not load top-level modules
from their folder) and build.py rewrites those imports to it."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

# The top-level modules a fit imports and the pip project of each: torch comes from Install Dependencies (or a
# site-packages folder), the others with the extension's wheels (requirements-extension.txt).
FIT_MODULES = {
    "torch": "torch", "trimesh": "trimesh", "pykdtree": "pykdtree", "scipy": "scipy", "roma": "roma",
    "safetensors": "safetensors", "yaml": "pyyaml", "PIL": "pillow", "anny": "anny", "smplx": "smplx",
    "cv2": "opencv-python-headless", "mediapipe": "mediapipe", "matplotlib": "matplotlib",
}  # fmt: skip


def add_dependency_folders(folders) -> None:
    """Make the packages in `folders` (existing site-packages folders) importable."""
    added = False
    for folder in folders:
        if folder and Path(folder).is_dir() and str(folder) not in sys.path:
            sys.path.append(str(folder))
            added = True
    if added:
        importlib.invalidate_caches()


def missing_projects() -> list[str]:
    """The pip projects of FIT_MODULES that cannot be imported (found without importing them)."""
    return [project for module, project in FIT_MODULES.items() if module not in sys.modules and importlib.util.find_spec(module) is None]


def torch_available() -> bool:
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def cuda_status() -> str:
    """One line for the preferences: CUDA's state when torch is already loaded, without loading it."""
    if "torch" not in sys.modules:
        return "CUDA: checked when the first fit loads PyTorch"
    torch = sys.modules["torch"]
    return f"CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CUDA: not available (CPU)"
