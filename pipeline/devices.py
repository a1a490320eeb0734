"""Device choice: `auto` means CUDA when present, else CPU. Nothing here assumes CUDA exists."""

from __future__ import annotations

from pathlib import Path

# A CUDA (or ROCm, which torch also calls cuda) GPU shows up as one of these device nodes; without any, torch
# would find no GPU either, and `auto` is answered without importing it (about 2 s in a cold `lipsyncd render`).
GPU_NODES = ("nvidia[0-9]*", "kfd")


def resolve(device: str) -> str:
    """Turn a configured device (auto, cpu, cuda, cuda:N) into the one to use, or raise ValueError."""
    if device == "cpu" or (device == "auto" and not _gpu_nodes()):
        return "cpu"
    import torch  # only when a GPU may be involved: a CPU-only command-engine worker starts faster

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = "cuda:0"
    if device.startswith("cuda:") and device[5:].isdigit():
        index = int(device[5:])
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} was asked for but this machine has no usable CUDA GPU")
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
        return device
    raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda:N")


def _gpu_nodes(dev: Path = Path("/dev")) -> bool:
    return any(any(dev.glob(pattern)) for pattern in GPU_NODES)
