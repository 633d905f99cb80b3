"""Synthetic training data: random bodies (pose family, shape, facing) and their scans, reproducible per index.

Sample i of `SyntheticScans(body_name, seed, ...)` depends only on (seed, i): its generator is seeded with
`np.random.default_rng([seed, i])`, so any number of data workers, in any order, produce the same data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..body import BodyParams, load_body_model
from .poses import pose_families, sample_global_orient, sample_pose
from .scans import ScanRealism, SyntheticScan, make_scan
from .shapes import sample_shape

SHAPE_BLOCK = 64  # shapes are drawn in blocks: anny's shape sampler costs ~5 ms a call, <0.1 ms a body in a block


@dataclass(frozen=True)
class BodySampling:
    """How random bodies are drawn: facing yaw uniform in +-yaw_range_deg about the canonical facing (training
    uses a limited range: the network cannot infer an arbitrary facing well), tilt up to tilt_deg, pose
    families (None: all of the model's), children (Anny ages from 4 instead of 18 years)."""

    yaw_range_deg: float = 30.0
    tilt_deg: float = 5.0
    families: tuple[str, ...] | None = None
    children: bool = False


def draw_family(body, rng: np.random.Generator, sampling: BodySampling = BodySampling()) -> str:
    """The pose family of a random body: one of sampling.families, or of all the model's."""
    families = sampling.families or pose_families(body)
    return families[rng.integers(len(families))]


def sample_params(
    body,
    rng: np.random.Generator,
    n: int = 1,
    sampling: BodySampling = BodySampling(),
    shape: np.ndarray | None = None,
    family: str | None = None,
) -> BodyParams:
    """n random bodies (scale 1, no translation), all of one pose family (given or drawn with `draw_family`).
    shape (n, S) given or drawn with `sample_shape`."""
    joint_pose = sample_pose(body, rng, n, family or draw_family(body, rng, sampling))
    orient = sample_global_orient(body, rng, n, sampling.yaw_range_deg, sampling.tilt_deg)
    if shape is None:
        shape = sample_shape(body, rng, n, children=sampling.children)
    params = body.zero_params(n)
    return params.with_(
        global_orient=torch.from_numpy(orient), joint_pose=torch.from_numpy(joint_pose), shape=torch.from_numpy(shape)
    ).to(dtype=body.dtype)


class SyntheticScans(torch.utils.data.IterableDataset):
    """Random scans of random bodies. `dataset[i]` is sample i; iterating yields samples start, start+1, ...
    (`length` of them, or forever when None), split across DataLoader workers by index (i % workers)."""

    def __init__(
        self,
        body_name: str = "anny",
        seed: int = 0,
        realism: ScanRealism = ScanRealism(),
        sampling: BodySampling = BodySampling(),
        *,
        body_path: str | Path | None = None,
        length: int | None = None,
        start: int = 0,
    ):
        super().__init__()
        self.body_name, self.body_path = body_name, body_path
        self.seed, self.realism, self.sampling = seed, realism, sampling
        self.length, self.start = length, start
        self._shape_block: tuple[int, np.ndarray] | None = None

    @property
    def body(self):
        return load_body_model(self.body_name, self.body_path)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an endless SyntheticScans has no length")
        return self.length

    def _shape(self, index: int) -> np.ndarray:
        """(1, S) the shape of sample `index`, from its block of SHAPE_BLOCK shapes (cached: consecutive
        indices share it). Depends only on (seed, index)."""
        block = index // SHAPE_BLOCK
        if self._shape_block is None or self._shape_block[0] != block:
            rng = np.random.default_rng([self.seed, block, 1])  # a stream apart from the per-sample ones
            self._shape_block = (block, sample_shape(self.body, rng, SHAPE_BLOCK, children=self.sampling.children))
        return self._shape_block[1][index % SHAPE_BLOCK][None]

    def __getitem__(self, index: int) -> SyntheticScan:
        rng = np.random.default_rng([self.seed, index])
        family = draw_family(self.body, rng, self.sampling)
        params = sample_params(self.body, rng, 1, self.sampling, shape=self._shape(index), family=family)
        scan = make_scan(self.body, params, rng, realism=self.realism)
        scan.info["pose_family"] = family
        return scan

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        index = self.start + worker
        while self.length is None or index < self.start + self.length:
            yield self[index]
            index += workers


# ---------------------------------------------------------------------------------------------------------
# Held-out validation sets: stored as parameters and settings, regenerated exactly.

VALIDATION_SEED = 20240611


def held_out_set(
    body_name: str = "anny",
    n: int = 64,
    seed: int = VALIDATION_SEED,
    realism: ScanRealism = ScanRealism(),
    sampling: BodySampling = BodySampling(),
    body_path: str | Path | None = None,
) -> SyntheticScans:
    """The fixed validation scans: samples 0..n-1 of a seed that training never uses. body_path: the user's
    model file for SMPL / MANO."""
    return SyntheticScans(body_name, seed, realism, sampling, body_path=body_path, length=n)


def save_validation_set(dataset: SyntheticScans, path: str | Path) -> Path:
    """A compact .npz of the set's parameters and settings (not the points): `load_validation_set` regenerates
    the scans exactly from it."""
    scans = list(dataset)
    params = BodyParams.concatenate([scan.params for scan in scans]).to_numpy()
    settings = {
        "body": dataset.body_name, "seed": dataset.seed, "start": dataset.start, "length": len(scans),
        "realism": asdict(dataset.realism), "sampling": asdict(dataset.sampling),
    }  # fmt: skip
    path = Path(path)
    np.savez_compressed(path, settings=json.dumps(settings), **params)
    return path


def load_validation_set(path: str | Path, body_path: str | Path | None = None) -> tuple[SyntheticScans, dict]:
    """The dataset stored by `save_validation_set` and its stored parameters {name: (n, ...) array} (to check
    that the regenerated bodies match)."""
    with np.load(path, allow_pickle=False) as npz:
        settings = json.loads(str(npz["settings"]))
        params = {key: npz[key] for key in npz.files if key != "settings"}
    realism = ScanRealism.from_json(json.dumps(settings["realism"]))
    sampling_kw = settings["sampling"]
    families = sampling_kw.pop("families")
    sampling = BodySampling(families=tuple(families) if families else None, **sampling_kw)
    dataset = SyntheticScans(
        settings["body"], settings["seed"], realism, sampling, body_path=body_path,
        length=settings["length"], start=settings["start"],
    )  # fmt: skip
    return dataset, params
