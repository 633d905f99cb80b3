"""Which torch device to run on: CUDA when present, CPU otherwise."""

import re

import torch


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
