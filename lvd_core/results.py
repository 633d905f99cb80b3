"""What a fit returns and how it reports: the result of one fitted input (scan or photo), the errors a caller
can expect, progress and cancel, stage timings, and the check that refuses an absurd fit."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .body import BodyParams
from .inputs.frame import apply_transform
from .inputs.scan import ScanError

# A fit whose median scan-to-body distance exceeds this share of the body's size is refused: no body fits so
# badly unless the scan was read in the wrong units or up axis (fits of real scans lie under 3%).
MAX_RESIDUAL_SHARE = 0.1


class FitCancelled(Exception):
    """The caller's cancel event was set; nothing was returned."""


class InputError(ValueError):
    """The input or the options cannot be fitted; the message is one line: the problem and the fix."""


@dataclass
class FitResult:
    """One fitted input. `params` (batch 1) are in the model frame (metres, model up axis);
    `input_from_model` (4, 4) maps that frame to the input's own frame and units; `vertices_input` (V, 3) is
    the fitted mesh there. residual_mm: median distance from the scan to the fitted body, in mm."""

    body_name: str
    params: BodyParams
    input_from_model: np.ndarray
    vertices_input: np.ndarray
    lvd_vertices_input: np.ndarray  # (N, 3) what the network predicted, input frame ...
    lvd_vertex_ids: np.ndarray  # (N,) ... for these body vertices (its vertex subset; twice over if read mirrored)
    residual_mm: float
    units: str
    timings: dict = field(default_factory=dict)
    facing_deg: float = 0.0
    batch_size: int = 1  # scans fitted together (fit_scans); the timings are then the whole batch's
    # Median distance from the network's vertices to the fitted body's, mm in the model frame (like residual_mm),
    # and whether it is past DOUBT_SHARE of the model's size: the network misread the pose, check the fit.
    disagreement_mm: float = float("nan")
    doubtful: bool = False
    # Whether the person detector found the person (and so their facing) on the scan; None: not looked for.
    person_found: bool | None = None
    # Median distance from the fitted body's landmarks to the detected ones, mm in the model frame (NaN: none);
    # past LANDMARK_DOUBT_SHARE of the model's size, the fit is doubtful too.
    landmark_disagreement_mm: float = float("nan")
    # Hands whose side was chosen (lvd_core.hands): the other side's residual minus this one's, mm, and whether
    # that is too small to tell the sides apart (check the side).
    side_gap_mm: float = float("nan")
    side_uncertain: bool = False
    # Hands: how far the fitted fingers bend towards the palm (lvd_core.hands.fingertip_curl), and whether they bend
    # backwards as a hand read as the wrong side does (then side_uncertain too).
    finger_curl: float = float("nan")
    fingers_bent_back: bool = False
    # (3, 3) the turn (input frame) that stood up a person lying or upside down in the file (lvd_core.scan_checks);
    # input_from_model already includes its inverse. The identity when the person stood along the file's up axis.
    upright_turn: np.ndarray = field(default_factory=lambda: np.eye(3))

    def quality_label(self, short: bool = False) -> str:
        """How well the body fits its input, for people: a sentence, or a table cell."""
        if short:
            return f"{self.residual_mm:.1f} mm" + (", check" if self.doubtful or self.side_uncertain else "")
        label = f"residual {self.residual_mm:.1f} mm (median distance from the scan to the fitted body)"
        if self.doubtful:
            landmarks = "" if np.isnan(self.landmark_disagreement_mm) else (
                f", the detected landmarks {self.landmark_disagreement_mm:.0f} mm")
            label += (f"; doubtful: the network's vertices lie {self.disagreement_mm:.0f} mm (median) from the fitted body"
                      f"{landmarks}, as when it misreads an unusual pose: check the fit")  # fmt: skip
        if self.side_uncertain:
            why = ("its fingers bend backwards, as a hand read as the wrong side does" if self.fingers_bent_back else
                   f"the other hand fits nearly as well ({self.side_gap_mm:.1f} mm farther from the scan)")  # fmt: skip
            label += f"; {why}: check that it is a {self.body_name.rsplit('-', 1)[-1]} hand or force the side"
        return label


class StageTimer:
    """Call with a stage's name when it ends: `timings` holds each stage's seconds since the previous call,
    summed over the calls of a stage that comes back."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self._clock, 3)
        self._clock = now


def report_progress(progress, fraction: float, message: str, cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise FitCancelled("cancelled")
    if progress is not None:
        progress(fraction, message)


def check_residual(result: FitResult, fix: str) -> None:
    """ScanError when the fit's median scan-to-body distance is over MAX_RESIDUAL_SHARE of the body's size: the
    scan was read in the wrong units or up axis (or is no body), and its numbers would be nonsense. `fix`: what
    the user can do, in the caller's words."""
    model_vertices = apply_transform(np.linalg.inv(result.input_from_model), result.vertices_input)
    size_mm = 1000 * float(np.ptp(model_vertices, axis=0).max())
    if not result.residual_mm <= MAX_RESIDUAL_SHARE * size_mm:  # also NaN
        raise ScanError(f"the fit is off: the scan lies {result.residual_mm:.0f} mm (median) from a {size_mm:.0f} mm body; {fix}")
