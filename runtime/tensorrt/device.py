"""The CUDA GPUs this process sees, from the NVIDIA driver itself (``libcuda``, through ctypes).

Asking the driver needs neither torch nor a CUDA toolkit, so an engine's loader can say "no GPU" on a machine
without them, and the builder records the same name and compute capability PyTorch would report (both read
``cuDeviceGetName`` and the compute-capability attributes). ``CUDA_VISIBLE_DEVICES`` applies as everywhere.
"""
from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass

from ..errors import BackendError

_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
_LIBS = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


@dataclass(frozen=True)
class DeviceInfo:
    """One CUDA GPU."""

    name: str
    compute_capability: str  # "8.6"
    index: int = 0

    @property
    def key(self) -> str:
        """A file-name-safe key, e.g. ``nvidia-geforce-rtx-4090-sm89``."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return f"{slug}-sm{self.compute_capability.replace('.', '')}"

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.index}"


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[tuple[DeviceInfo, ...], str]:
    """(GPUs, why there are none): read once per process."""
    lib = None
    for name in _LIBS:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return (), "no NVIDIA driver (libcuda cannot be loaded)"
    if lib.cuInit(0) != 0:
        return (), "the NVIDIA driver reports no usable GPU (cuInit failed)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return (), "the NVIDIA driver sees no GPU"
    devices = []
    for i in range(count.value):
        handle, buf = ctypes.c_int(0), ctypes.create_string_buffer(256)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(handle), i) != 0:
            continue
        lib.cuDeviceGetName(buf, len(buf), handle)
        lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, handle)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, handle)
        devices.append(DeviceInfo(buf.value.decode(errors="replace"), f"{major.value}.{minor.value}", i))
    return tuple(devices), "" if devices else "the NVIDIA driver sees no GPU"


def cuda_devices() -> list[DeviceInfo]:
    """Every visible CUDA GPU; empty without a driver or GPU."""
    return list(_probe()[0])


def no_gpu_reason() -> str:
    """Why :func:`cuda_devices` is empty ("" when it is not)."""
    return _probe()[1]


def detect_device() -> DeviceInfo | None:
    """The first CUDA GPU, or None without one."""
    devices = cuda_devices()
    return devices[0] if devices else None


def resolve_device(device: str | None) -> DeviceInfo | None:
    """The GPU ``device`` names (``None``/``cuda`` = the first, ``cuda:N``); None when no GPU is visible.

    ``cpu`` and unknown or out-of-range devices raise :class:`BackendError`."""
    text = (device or "cuda").strip().lower()
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise BackendError(f"TensorRT engines run on a CUDA GPU: use device='cuda' or 'cuda:N', not {device!r}")
    devices = cuda_devices()
    if not devices:
        return None
    index = int(match.group(1) or 0)
    if index >= len(devices):
        raise BackendError(f"device {device!r} does not exist: {len(devices)} CUDA GPU(s) visible "
                           f"({', '.join(d.name for d in devices)})")
    return devices[index]
