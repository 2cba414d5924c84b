"""The TensorRT core of the runtime: engine loading, the sidecar format, TensorRT's log, device helpers and
the backend with its pool of execution contexts.

Imports neither onnx, onnxscript nor torch (torch is imported when an engine is actually loaded, to hold
GPU buffers), so a service that only runs engines installs only what it runs. The build side lives in
``psvit.export.tensorrt`` and imports this package, never the other way round.
"""
from __future__ import annotations

from .device import DeviceInfo, cuda_devices, detect_device, resolve_device
from .engine import LoadedEngine, ProvenanceWarning, TensorInfo, load_engine
from .layers import LayerPrecisions, layer_precisions, tensor_precision
from .library import FLAVOURS, import_tensorrt, normalise_flavour
from .logger import LogCapture, capture, trt_logger
from .sidecar import EngineSidecar, check_sidecar, read_sidecar, sidecar_path, write_sidecar

__all__ = [
    "load_engine", "LoadedEngine", "TensorInfo", "ProvenanceWarning", "EngineSidecar", "read_sidecar",
    "check_sidecar", "write_sidecar", "sidecar_path", "import_tensorrt", "normalise_flavour", "FLAVOURS",
    "DeviceInfo", "cuda_devices", "detect_device", "resolve_device", "capture", "trt_logger", "LogCapture",
    "LayerPrecisions", "layer_precisions", "tensor_precision",
]
