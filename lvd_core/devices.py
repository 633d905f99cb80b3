"""Which torch device to run on (CUDA when present, CPU otherwise), and how many scans to fit together on it."""

import re

import torch

# Scans fitted together on a GPU (`lvd batch`, Blender's Batch fit); not measured on a GPU yet (none was lent).
GPU_BATCH = 8


def pick_device(preference: str = "auto") -> torch.device:
    """The device to run on.

    'auto': CUDA when usable, else the CPU; 'cuda' / 'cuda:N': that GPU, or a RuntimeError saying why there
    is none; 'cpu': the CPU.
    """
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", preference):
        raise ValueError(f"device preference {preference!r}: expected 'auto', 'cuda', 'cuda:N' or 'cpu'")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        reason = "this torch build has no CUDA" if torch.version.cuda is None else "no usable NVIDIA GPU or driver"
        raise RuntimeError(f"CUDA was requested but is not available ({reason}); use 'cpu' or 'auto'")
    device = torch.device("cuda" if preference == "auto" else preference)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"{preference} was requested but there are only {torch.cuda.device_count()} CUDA devices")
    return device


def batch_size_for(device: torch.device, requested: int | None = None) -> int:
    """Scans per `pipeline.fit_scans` batch: `requested`, else GPU_BATCH on CUDA and 1 (scan by scan) on the
    CPU, where batching gains little (measured: 10 scans/min as one batch, 8/min one by one)."""
    return requested or (GPU_BATCH if device.type == "cuda" else 1)
