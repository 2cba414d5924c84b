"""Numerical parity with the real timm DeiT (no mocks): timm weights load into PSViT and give timm's logits,
PSViT's DeiT weights load into timm, and a PSViT warm-starts its first stage from DeiT-Ti.

timm models are built with ``pretrained=False`` (seeded random init, nothing downloaded); every parameter is
then perturbed with seeded noise so that LayerNorm affines and biases, which timm initialises to constants,
take part in the comparison.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import psvit
from psvit.checkpoint import WarmStartReport

timm = pytest.importorskip("timm", reason="timm parity tests need the real timm (pip install timm)")

pytestmark = pytest.mark.timm

TIMM_NAMES = {"deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224"}
MAX_REL_ERR = 1e-5
FIRST_STAGE_BLOCKS = 4  # psvit_2d_tiny: depths (4, 6, 4), stage 0 has DeiT-Ti's width and heads


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error ||a - b|| / ||b||."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@torch.no_grad()
def perturb_(model: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Add seeded Gaussian noise to every parameter in place (makes norm affines and biases non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def create_timm(variant: str, seed: int, fused: bool = True) -> nn.Module:
    """timm's DeiT matching ``variant``, randomly initialised from ``seed``, eval mode."""
    torch.manual_seed(seed)
    model = timm.create_model(TIMM_NAMES[variant], pretrained=False)
    set_timm_fused(model, fused)
    return perturb_(model, seed).eval()


def set_timm_fused(model: nn.Module, fused: bool) -> None:
    """Switch timm's attention between ``scaled_dot_product_attention`` and explicit matmul-softmax."""
    for blk in model.blocks:
        assert hasattr(blk.attn, "fused_attn"), "timm Attention no longer has fused_attn"
        blk.attn.fused_attn = fused


@dataclass(frozen=True)
class TimmReference:
    """A seeded timm DeiT, its weights on disk in two foreign formats, an input and timm's logits."""

    variant: str
    model: nn.Module
    x: torch.Tensor  # (2, 3, 224, 224)
    logits: dict[str, torch.Tensor]  # "fused" / "explicit" timm attention -> (2, 1000)
    files: dict[str, Path]  # "pth" / "safetensors" -> path


@pytest.fixture(scope="module", params=sorted(TIMM_NAMES))
def reference(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TimmReference]:
    variant: str = request.param
    model = create_timm(variant, seed=0)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    logits = {}
    with torch.inference_mode():
        for mode, fused in (("fused", True), ("explicit", False)):
            set_timm_fused(model, fused)
            logits[mode] = model(x)
    set_timm_fused(model, True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp(variant)
    files = {"pth": folder / f"{variant}.pth", "safetensors": folder / f"{variant}.safetensors"}
    torch.save(state, files["pth"])
    save_file(state, str(files["safetensors"]))  # foreign: no psvit metadata
    yield TimmReference(variant, model, x, logits, files)


def test_timm_fused_and_explicit_agree(reference: TimmReference) -> None:
    assert rel_err(reference.logits["explicit"], reference.logits["fused"]) <= MAX_REL_ERR


@pytest.mark.parametrize("exportable", [False, True], ids=["default", "exportable"])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_weights_give_timm_logits(reference: TimmReference, fmt: str, exportable: bool) -> None:
    ckpt = psvit.load_checkpoint(reference.files[fmt], variant=reference.variant, exportable=exportable)
    assert ckpt.variant == reference.variant
    assert ckpt.config == psvit.get_config(reference.variant)
    assert ckpt.model.fused_attention is not exportable
    with torch.inference_mode():
        out = ckpt.model(reference.x)
    for mode, expected in reference.logits.items():
        err = rel_err(out, expected)
        assert err <= MAX_REL_ERR, f"{fmt}, exportable={exportable} vs timm {mode} attention: rel err {err:.2e}"


@pytest.mark.parametrize("variant", sorted(TIMM_NAMES))
def test_psvit_deit_weights_load_into_timm(variant: str) -> None:
    torch.manual_seed(2)
    ours = perturb_(psvit.create_model(variant), seed=2).eval()
    theirs = timm.create_model(TIMM_NAMES[variant], pretrained=False).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = ours(x)
        for fused in (True, False):
            set_timm_fused(theirs, fused)
            err = rel_err(theirs(x), expected)
            assert err <= MAX_REL_ERR, f"timm fused={fused}: rel err {err:.2e}"


# ---- warm start: PSViT-2D-Ti's first stage from DeiT-Ti ------------------------------------------------
@pytest.fixture(scope="module")
def deit_tiny_timm() -> nn.Module:
    return create_timm("deit_tiny", seed=4)


def first_stage_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the patch embedding, class token, position embedding and stage-0 blocks."""
    prefixes = ("patch_embed.", *(f"blocks.{b}." for b in range(FIRST_STAGE_BLOCKS)))
    return {k for k in model.state_dict() if k in ("cls_token", "pos_embed") or k.startswith(prefixes)}


def warm_started_psvit(
    source: nn.Module, tmp_path: Path, from_file: bool
) -> tuple[nn.Module, WarmStartReport]:
    state = {k: v.detach().contiguous() for k, v in source.state_dict().items()}
    if from_file:
        path = tmp_path / "deit_tiny.safetensors"
        save_file(state, str(path))
        src: Path | dict[str, torch.Tensor] = path
    else:
        src = state
    torch.manual_seed(5)
    model = psvit.create_model("psvit_2d_tiny").eval()
    assert model.cfg.depths[0] == FIRST_STAGE_BLOCKS and model.cfg.dims[0] == 192 and model.cfg.heads[0] == 3
    return model, psvit.warm_start(model, src)


@pytest.mark.parametrize("from_file", [False, True], ids=["dict", "safetensors"])
def test_warm_start_first_stage_matches_timm(deit_tiny_timm: nn.Module, tmp_path: Path, from_file: bool) -> None:
    model, report = warm_started_psvit(deit_tiny_timm, tmp_path, from_file)
    expected = first_stage_keys(model)
    assert expected <= set(report.loaded), f"not loaded: {sorted(expected - set(report.loaded))}"
    theirs = deit_tiny_timm.state_dict()
    ours = model.state_dict()
    for k in expected:
        assert torch.equal(ours[k], theirs[k]), k

    captured: dict[str, torch.Tensor] = {}
    hooks = [
        model.blocks[FIRST_STAGE_BLOCKS - 1].register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("psvit", out[0])  # Block returns (x, state)
        ),
        deit_tiny_timm.blocks[FIRST_STAGE_BLOCKS - 1].register_forward_hook(
            lambda _m, _i, out: captured.__setitem__("timm", out)
        ),
    ]
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    try:
        with torch.inference_mode():
            model(x)
            deit_tiny_timm(x)
    finally:
        for h in hooks:
            h.remove()
    assert captured["psvit"].shape == captured["timm"].shape == (2, 197, 192)
    err = rel_err(captured["psvit"], captured["timm"])
    assert err <= MAX_REL_ERR, f"activations after block {FIRST_STAGE_BLOCKS - 1}: rel err {err:.2e}"


def test_warm_start_loads_only_the_first_stage(deit_tiny_timm: nn.Module, tmp_path: Path) -> None:
    model, report = warm_started_psvit(deit_tiny_timm, tmp_path, from_file=False)
    assert set(report.loaded) == first_stage_keys(model)


# ---- distilled DeiT is refused -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def distilled_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(7)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    assert "dist_token" in state
    folder = tmp_path_factory.mktemp("distilled")
    files = {"pth": folder / "distilled.pth", "safetensors": folder / "distilled.safetensors"}
    torch.save(state, files["pth"])
    save_file(state, str(files["safetensors"]))
    return files


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_distilled_deit_is_refused(distilled_files: dict[str, Path], fmt: str) -> None:
    with pytest.raises(psvit.CheckpointError, match="distillation token"):
        psvit.load_checkpoint(distilled_files[fmt], variant="deit_tiny")


def test_distilled_deit_warm_start_is_refused(distilled_files: dict[str, Path]) -> None:
    model = psvit.create_model("psvit_2d_tiny")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(psvit.CheckpointError, match="distillation token"):
        psvit.warm_start(model, distilled_files["safetensors"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a refused warm start changed the model"
