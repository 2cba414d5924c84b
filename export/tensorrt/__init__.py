"""The TensorRT build side: ONNX -> serialized plan (TensorRT 10.x/11.x or TensorRT-RTX), build options,
timing caches, the post-build precision check, and the engine file with its provenance sidecar.

Loading and running engines, the sidecar format, TensorRT's log and device helpers are the runtime's
(:mod:`psvit.runtime.tensorrt`); this package builds on them and nothing there imports from here.
"""
from __future__ import annotations

from .build import BUILDERS, DEFAULT_BATCH_PROFILE, Builder, EngineBuild, build_engine, resolve_builder
from .engine_file import (
    EngineRequest, EngineResult, build_engine_file, build_settings, check_build_options, check_engine_output,
    engine_request, write_engine,
)
from .inspect import LayerPrecisions, check_layer_precisions, parse_engine_information
from .options import OnnxFacts, inspect_onnx_file, parse_batch_profile, parse_size, resolve_precision
from .timing_cache import cache_key, default_cache_path, load_cache, save_cache

__all__ = [
    "build_engine", "EngineBuild", "Builder", "resolve_builder", "BUILDERS", "DEFAULT_BATCH_PROFILE",
    "build_engine_file", "EngineResult", "EngineRequest", "engine_request", "write_engine", "check_build_options",
    "build_settings",
    "check_engine_output", "check_layer_precisions", "parse_engine_information", "LayerPrecisions", "OnnxFacts",
    "inspect_onnx_file", "parse_batch_profile", "parse_size", "resolve_precision", "cache_key",
    "default_cache_path", "load_cache", "save_cache",
]
