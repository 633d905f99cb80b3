"""The demo's sample scan: a clothed Anny body written like a real scan file (centimetres, Y-up) with its
ground truth beside it.

    python -m lvd_core.synth.demo   # writes lvd_core/data/sample_scan.ply and sample_scan.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..body import load_body_model
from .dataset import BodySampling, sample_params
from .scans import ScanRealism, clothed_surface, posed_body, to_file_frame

DEMO_UNITS, DEMO_UP_AXIS = "cm", "y"
DEMO_CLOTHES = ScanRealism(tight_clothes_probability=1.0, loose_garment_probability=1.0, hair_probability=1.0)
DEMO_SAMPLING = BodySampling(yaw_range_deg=20.0, families=("standing", "a_pose"))
DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def make_demo_scan(seed: int = 0):
    """(trimesh.Trimesh in cm, Y-up, the body's params) of a clothed Anny body: tight clothes, hair and a skirt
    or coat. Every face is kept (the skirt's underside closes it), so the mesh is as closed as Anny's."""
    import trimesh

    body = load_body_model("anny")
    rng = np.random.default_rng(seed)
    params = sample_params(body, rng, 1, DEMO_SAMPLING)
    vertices, joints = posed_body(body, params)
    clothed, _, _ = clothed_surface(vertices, joints, body, rng, DEMO_CLOTHES)
    points = to_file_frame(clothed, body.up_axis, units=DEMO_UNITS, up_axis=DEMO_UP_AXIS)
    return trimesh.Trimesh(points, body.faces, process=False), params


def write_demo_scan(directory: Path = DATA_DIR, seed: int = 0) -> Path:
    """Writes sample_scan.ply and sample_scan.json (body, params, units, up axis, seed) into `directory`."""
    mesh, params = make_demo_scan(seed)
    ply = Path(directory) / "sample_scan.ply"
    mesh.export(ply)
    truth = {
        "body": "anny", "units": DEMO_UNITS, "up_axis": DEMO_UP_AXIS, "seed": seed,
        "note": "params map the model frame (metres, Z-up) to the body; the scan is that frame in cm, Y-up "
                "(x, y, z)_file = 100 * (x, z, -y)_model",
        "params": {name: value.tolist() for name, value in params.to_numpy().items()},
    }  # fmt: skip
    ply.with_suffix(".json").write_text(json.dumps(truth, indent=1))
    return ply


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(write_demo_scan())
