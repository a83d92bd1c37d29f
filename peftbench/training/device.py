"""Where and in which precision runs compute: the device, the autocast precision and the optimizer kernel.

A leaf module (torch only): the trainer, the runner, the executors, `bench` and the CLI all resolve these the same way.
"""

from __future__ import annotations

import torch

from ..errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# How Adam(W) runs its update, same maths: one fused kernel over all tensors (default; ~5x faster than the loop on
# the CPU, equal to it within 1 ulp), one kernel per operation over all tensors (bitwise equal to the loop), or
# PyTorch's loop over the tensors (its CPU default, which records made before the flag existed used).
OPTIMIZER_KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: on CUDA bf16 autocast where the GPU computes in bf16 natively (compute capability 8.0 on: A100, H100;
    no loss scaling needed), fp16 with loss scaling on older ones (V100, the paper's); fp32 on the CPU."""
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16: fp16 autocast needs CUDA; use fp32 or bf16 on the CPU")
    return name


def autocast(device: torch.device, precision: str):
    """Mixed-precision context of `precision` ("fp32" disables it)."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.float32),
                          enabled=precision in AUTOCAST_DTYPES)
