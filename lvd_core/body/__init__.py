"""Body models behind one interface (`BodyModel`): Anny body and hands (shipped), SMPL, SMPL-X and MANO (user files)."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import BodyModel, BodyModelError, BodyOutput, BodyParams

BODY_MODEL_NAMES = ("anny", "anny-hand", "anny-hand-right", "anny-hand-left", "smpl", "smplx", "mano", "mano-right", "mano-left")

_cache: dict[tuple, BodyModel] = {}


def load_body_model(
    name: str = "anny", path: str | Path | None = None, *, device: str | torch.device = "cpu", dtype=torch.float32
) -> BodyModel:
    """The body model `name` on `device`/`dtype` (cached per process: they are read-only).

    `path` is the user's SMPL / SMPL-X / MANO file (required for those; ignored for Anny, which ships with LVD).
    Raises BodyModelError with a one-line message for an unknown name or a missing or wrong file.
    """
    if name not in BODY_MODEL_NAMES:
        raise BodyModelError(f"unknown body model {name!r}; expected one of: {', '.join(BODY_MODEL_NAMES)}")
    key = (name, str(path) if path and not name.startswith("anny") else None, str(torch.device(device)), dtype)
    if key not in _cache:
        _cache[key] = _build(name, path).to(device=device, dtype=dtype).eval()
    return _cache[key]


def _build(name: str, path) -> BodyModel:
    if name.startswith("anny"):
        from .anny_model import AnnyBody

        return AnnyBody("anny-hand-right" if name == "anny-hand" else name)
    from .smpl_model import SMPLFamilyBody

    if path is None:
        what, site = {"smpl": ("SMPL", "https://smpl.is.tue.mpg.de"), "smplx": ("SMPL-X", "https://smpl-x.is.tue.mpg.de")}.get(
            name, ("MANO", "https://mano.is.tue.mpg.de")
        )
        raise BodyModelError(
            f"the {what} body model needs its model file: {what} is licensed and not shipped with LVD; download it "
            f"from {site} and give its path"
        )
    if name == "smpl":
        return SMPLFamilyBody(path, "smpl")
    if name == "smplx":
        from .smplx_model import SMPLXBody

        return SMPLXBody(path)
    is_right = {"mano-right": True, "mano-left": False}.get(name)
    return SMPLFamilyBody(path, "mano", is_right=is_right)


__all__ = ["BodyModel", "BodyModelError", "BodyOutput", "BodyParams", "load_body_model", "BODY_MODEL_NAMES"]
