"""Checkpoints: safetensors with the config in the file's metadata, ``.pth`` state dicts loaded safely
(``torch.load(weights_only=True)``), timm DeiT/ViT state dicts, and partial warm starts.

A safetensors checkpoint written by :func:`save_checkpoint` rebuilds its model alone: its metadata holds
the config, the variant name, the class names and the preprocessing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import DEMO, STATE_DICT_SUFFIXES as STATE_DICT_EXTENSIONS
from .config import PSViTConfig
from .errors import CheckpointError, ConfigError
from .provenance import atomic_output, package_versions, sha256_file

FORMAT = "psvit-checkpoint/1"
_MAX_LISTED = 12


def demo_checkpoint_path() -> Path:
    """The bundled trained micro PSViT (see README: how it was trained)."""
    return Path(__file__).with_name("assets") / "demo.safetensors"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode) and what the file says about it."""

    model: torch.nn.Module
    config: PSViTConfig
    path: Path
    sha256: str
    variant: str | None = None
    class_names: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess(self) -> dict[str, Any]:
        """Input size and normalisation the weights expect."""
        return self.config.preprocess


def resolve_checkpoint_path(source: str | os.PathLike) -> Path:
    """``"demo"`` -> the bundled model; otherwise the path, which must exist."""
    if str(source) == DEMO:
        path = demo_checkpoint_path()
        if not path.is_file():
            raise CheckpointError(
                f"the bundled demo model is missing at {path}; reinstall psvit-deploy or retrain it "
                f"(README: 'The bundled demo model')"
            )
        return path
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass a .safetensors or .pth file")
    return path


def save_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as safetensors with its config (and class names, preprocessing) in the metadata.

    ``metadata`` is stored as JSON under ``psvit.extra`` (training recipe, accuracy, data hash...).
    The file is written to a temporary name and renamed, so a failure leaves no partial file.
    """
    from safetensors.torch import save_file

    cfg: PSViTConfig = model.cfg
    if class_names is not None and len(class_names) != cfg.num_classes:
        raise ConfigError(
            f"{len(class_names)} class names given for a model with {cfg.num_classes} classes"
        )
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoints are written as .safetensors; got {path.name}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "psvit.config": cfg.to_json(),
        "psvit.variant": getattr(model, "variant", None) or "",
        "psvit.class_names": json.dumps(list(class_names) if class_names else None),
        "psvit.versions": json.dumps(package_versions("torch", "safetensors")),
        "psvit.extra": json.dumps(metadata or {}, sort_keys=True, default=str),
    }
    with atomic_output(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Decoded metadata of a safetensors checkpoint (empty for foreign files without our keys)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("psvit.") and key != "psvit.variant":
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
        else:
            out[key] = value
    return out


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        meta = read_checkpoint_metadata(path)
        try:
            return load_file(str(path)), meta
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    if path.suffix in STATE_DICT_EXTENSIONS:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{path} could not be loaded with torch.load(weights_only=True) ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Only plain state dicts are accepted; "
                f"pickled objects are refused for safety. Convert it with safetensors."
            ) from exc
        for key in ("state_dict", "model", "model_ema", "module"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path} does not hold a state dict of tensors")
        return obj, {}
    raise CheckpointError(
        f"unknown checkpoint format {path.suffix!r} for {path}; use .safetensors or a .pth/.pt state dict"
    )


def filter_foreign_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a timm DeiT/ViT (or DataParallel) state dict onto our key names, refusing what we can't load."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "dist_token" in state or any(k.startswith("head_dist.") for k in state):
        raise CheckpointError(
            "this is a distilled DeiT checkpoint (dist_token/head_dist): PSViT has no distillation token. "
            "Use the non-distilled DeiT weights (deit_*_patch16_224)."
        )
    if "fc_norm.weight" in state and "norm.weight" not in state:
        raise CheckpointError("this ViT pools with fc_norm (global average pooling); PSViT uses the class token")
    return state


def _shape_mismatches(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    own = model.state_dict()
    return [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]


def _listing(label: str, items: list[str]) -> str:
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{label} ({len(items)}): {', '.join(items[:_MAX_LISTED])}{more}"


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is one clear error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = _shape_mismatches(model, state)
    if missing or unexpected or shapes:
        parts = [f"{source} does not fit the model"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if shapes:
            parts.append(_listing("shape mismatches", shapes))
        parts.append("Check the variant and overrides (e.g. num_classes, img_size, share).")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state, strict=True)


def load_checkpoint(
    source: str | os.PathLike,
    variant: str | None = None,
    **kwargs: Any,
) -> Checkpoint:
    """Load a checkpoint and build its model in eval mode.

    Args:
        source: a ``.safetensors`` file written by :func:`save_checkpoint` (config inside), ``"demo"``, or a
            foreign state dict (``.safetensors`` without our metadata, ``.pth``/``.pt``; timm DeiT works).
        variant: the variant of a state dict that carries no config. For our own checkpoints it may be given
            only if it agrees with the file.
        kwargs: config overrides (e.g. ``num_classes=10``) and build options (``exportable``,
            ``shared_attention``, ``fused_attention``), as for :func:`psvit.create_model`.
    """
    from .registry import MODEL_OPTIONS, create_model, get_config

    path = resolve_checkpoint_path(source)
    options = {k: kwargs.pop(k) for k in MODEL_OPTIONS if k in kwargs}
    state, meta = _read_state_dict(path)
    stored_cfg, class_names, extra = _checked_metadata(meta, path)
    stored_variant = meta.get("psvit.variant") or None
    if stored_cfg is not None:
        cfg = stored_cfg
        if variant is not None and variant != stored_variant:
            expected = get_config(variant)
            if expected != cfg:
                raise ConfigError(
                    f"{path.name} holds a {stored_variant or 'custom'} model whose config differs from "
                    f"variant {variant!r}; drop --variant (the checkpoint carries its config)"
                )
        cfg = cfg.replace(**kwargs) if kwargs else cfg
        if kwargs and class_names is not None and cfg.num_classes != len(class_names):
            class_names = None
        variant = stored_variant or variant
    else:
        if variant is None:
            raise CheckpointError(
                f"{path.name} carries no PSViT config; name its architecture with variant=NAME "
                f"(CLI: --variant NAME), e.g. deit_small for timm's deit_small_patch16_224"
            )
        cfg = get_config(variant, **kwargs)
        state = filter_foreign_state_dict(state)
    model = create_model(cfg, **options)
    model.variant = variant
    load_state_dict_strict(model, state, path.name)
    model.eval()
    return Checkpoint(
        model=model, config=cfg, path=path, sha256=sha256_file(path), variant=variant,
        class_names=class_names, metadata=extra,
    )


def _checked_metadata(
    meta: dict[str, Any], path: Path
) -> tuple[PSViTConfig | None, list[str] | None, dict[str, Any]]:
    """The config, class names and extra metadata a checkpoint records, each checked for its shape.

    Damaged metadata (hand-edited, or written by another tool under our keys) is a CheckpointError that
    says so, instead of an error about the pieces of a misread value.
    """
    def corrupt(key: str, why: str) -> CheckpointError:
        return CheckpointError(
            f"{path.name}: its {key} metadata is corrupt ({why}); the file was damaged or edited: use an "
            f"intact copy, or write it again (psvit-export train, psvit.save_checkpoint)"
        )

    cfg = None
    if "psvit.config" in meta:
        try:
            cfg = PSViTConfig.from_dict(meta["psvit.config"])
        except ConfigError as exc:
            raise corrupt("psvit.config", str(exc)) from exc
    variant = meta.get("psvit.variant")
    if variant is not None and not isinstance(variant, str):
        raise corrupt("psvit.variant", f"a {type(variant).__name__}, not a name")
    names = meta.get("psvit.class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise corrupt("psvit.class_names", f"expected a JSON list of strings, got {str(names)[:60]!r}")
        if cfg is not None and len(names) != cfg.num_classes:
            raise corrupt("psvit.class_names", f"{len(names)} names for a model with {cfg.num_classes} classes")
    extra = meta.get("psvit.extra") or {}
    if not isinstance(extra, dict):
        raise corrupt("psvit.extra", f"expected a JSON object, got a {type(extra).__name__}")
    return cfg, names, extra


@dataclass(frozen=True)
class WarmStartReport:
    loaded: list[str]
    skipped_shape: list[str]
    not_in_model: list[str]
    not_in_checkpoint: list[str]


def warm_start(model: torch.nn.Module, source: str | os.PathLike | dict[str, torch.Tensor]) -> WarmStartReport:
    """Copy the tensors of every module that fits whole (e.g. a PSViT's first stage from DeiT weights).

    A module is loaded only if all of its tensors are in the checkpoint with the same shapes, so nothing
    is half-loaded (a DeiT ``head.bias`` of the same length never lands beside a foreign ``head.weight``).
    Returns what was loaded and what was not, so the caller can check that the intended part arrived.
    """
    if isinstance(source, dict):
        state = source
    else:
        state, _ = _read_state_dict(resolve_checkpoint_path(source))
    state = filter_foreign_state_dict(state)
    own = model.state_dict()
    fits = {k for k, v in state.items() if k in own and own[k].shape == v.shape}

    def module_of(key: str) -> str:
        return key.rpartition(".")[0] or key  # top-level parameters (cls_token, pos_embed) stand alone

    members: dict[str, list[str]] = {}
    for key in own:
        members.setdefault(module_of(key), []).append(key)
    loaded = sorted(k for k in fits if all(m in fits for m in members[module_of(k)]))
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    partial = sorted(fits - set(loaded))
    return WarmStartReport(
        loaded=loaded,
        skipped_shape=_shape_mismatches(model, state) + [f"{k}: its module does not fit whole" for k in partial],
        not_in_model=sorted(set(state) - set(own)),
        not_in_checkpoint=sorted(set(own) - set(state)),
    )
