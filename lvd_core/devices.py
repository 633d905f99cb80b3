"""Which torch device to run on (CUDA when present, CPU otherwise), how many scans to fit together on it, and
the number format training computes in there."""

import re

import torch

# Scans fitted together on a GPU (`lvd batch`, Blender's Batch fit); `--batch-size` and the preferences override it.
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


PRECISIONS = ("auto", "bf16", "fp32")  # the choices of training_autocast


def training_autocast(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype training steps compute their network in (torch.autocast; weights, optimiser and loss stay
    float32), or None for plain float32.

    'auto': bfloat16 where the hardware does it natively (CUDA GPUs that support it; CPUs with AVX-512 BF16 or
    AMX), float32 elsewhere, where emulated bfloat16 would be slower; 'bf16' / 'fp32': that. Measured on this
    project's CPU (AMD EPYC with AVX-512 BF16, 1 thread): a compact scan network's step 0.40 -> 0.23 s
    (benchmarks/results_train.md)."""
    if precision not in PRECISIONS:
        raise ValueError(f"training precision {precision!r}: expected 'auto', 'bf16' or 'fp32'")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # torch.cpu's capability probes are private: a torch without them counts as no native bfloat16.
    native = any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return torch.bfloat16 if native else None


def set_torch_threads(count: int) -> None:
    """Threads torch computes with (the CLI's --threads; Blender's fits use the CLI's default)."""
    torch.set_num_threads(count)
