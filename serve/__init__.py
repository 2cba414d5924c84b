"""Serving on NVIDIA Triton Inference Server: model repositories, a PyTriton server, a load generator.

>>> from psvit.serve import write_repository
>>> write_repository(["model.onnx"], "repo")          # stock Triton: tritonserver --model-repository repo
>>> from psvit.serve.server import serve              # PyTriton: the runtime as a Triton model
>>> from psvit.serve.loadgen import run_loadtest      # closed-loop sweep over concurrency levels

Needs the ``serve`` extra (``pip install 'psvit-deploy[serve]'``: nvidia-pytriton, tritonclient); those
packages are imported where they are used.
"""
from __future__ import annotations

from .errors import LoadTestError, ServeError
from .facts import ModelFacts, TensorFacts, read_engine_facts, read_facts, read_onnx_facts
from .repository import Repository, RepositoryModel, write_repository

__all__ = [
    "write_repository", "Repository", "RepositoryModel", "read_facts", "read_onnx_facts", "read_engine_facts",
    "ModelFacts", "TensorFacts", "ServeError", "LoadTestError",
]
