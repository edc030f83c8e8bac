"""Accelerators a plan is made for: memory per device and peak FLOP/s (vendor data sheets).

Peaks are dense (no sparsity), per device as JAX sees it: a TPU v2 / v3 *core* (a chip has
two), one v5e / v6e chip, one GPU (SXM parts for H100 / H200). ``bf16`` is the matmul peak in
bfloat16; ``f32`` the rate a float32 matmul runs at under JAX's default precision: one bfloat16
pass on TPUs (the same peak), TF32 on A100 / H100 / H200. ``usable`` is the part of the memory
a JAX process gets by default: all of a TPU's HBM; 75% of a GPU's, JAX's default
preallocation (``XLA_PYTHON_CLIENT_MEM_FRACTION``, raise it to use more).
"""

from __future__ import annotations

import dataclasses

GB, GiB = 10 ** 9, 2 ** 30


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One accelerator device: ``memory`` bytes, ``usable`` fraction, peaks in FLOP/s."""

    label: str
    memory: int
    usable: float
    bf16: float
    f32: float

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for compute in ``dtype`` (``model.dtype``: float32, bfloat16, float16)."""
        return self.f32 if dtype == "float32" else self.bf16


ACCELERATORS = {
    "tpu_v2": Accelerator("TPU v2 core (8 GiB)", 8 * GiB, 1.0, 22.5e12, 22.5e12),
    "tpu_v3": Accelerator("TPU v3 core (16 GiB)", 16 * GiB, 1.0, 61.5e12, 61.5e12),
    "tpu_v5e": Accelerator("TPU v5e chip (16 GiB)", 16 * GiB, 1.0, 197e12, 197e12),
    "tpu_v6e": Accelerator("TPU v6e chip (32 GiB)", 32 * GiB, 1.0, 918e12, 918e12),
    "a100_40": Accelerator("A100 40 GB", 40 * GB, 0.75, 312e12, 156e12),
    "a100_80": Accelerator("A100 80 GB", 80 * GB, 0.75, 312e12, 156e12),
    "h100": Accelerator("H100 SXM 80 GB", 80 * GB, 0.75, 989e12, 495e12),
    "h200": Accelerator("H200 SXM 141 GB", 141 * GB, 0.75, 989e12, 495e12),
}


def get(name: str) -> Accelerator:
    """The accelerator ``name`` (a key of ``ACCELERATORS``).

    Raises: ValueError naming the choices.
    """
    if name not in ACCELERATORS:
        raise ValueError(f"plan.accelerator={name!r} is not one of {', '.join(ACCELERATORS)}.")
    return ACCELERATORS[name]


#: ``jax.Device.device_kind`` substrings -> ``ACCELERATORS`` key (first match wins).
DEVICE_KINDS = (("TPU v2", "tpu_v2"), ("TPU v3", "tpu_v3"), ("TPU v5 lite", "tpu_v5e"),
                ("TPU v5e", "tpu_v5e"), ("TPU v6", "tpu_v6e"), ("A100-SXM4-40GB", "a100_40"),
                ("A100-PCIE-40GB", "a100_40"), ("A100", "a100_80"), ("H100", "h100"),
                ("H200", "h200"))


def from_device_kind(kind: str) -> str | None:
    """The ``ACCELERATORS`` key of a device (``jax.devices()[0].device_kind``), or None for a
    device not in the table (a CPU, another GPU)."""
    return next((name for sub, name in DEVICE_KINDS if sub.lower() in kind.lower()), None)
