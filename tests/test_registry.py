"""Variant registry: names, creation with overrides, helpful errors."""
import pytest
import torch

import psvit
from psvit import UnknownVariantError


def test_list_models_has_the_documented_variants():
    names = set(psvit.list_models())
    assert {"psvit_1d_tiny", "psvit_1d_small", "psvit_2d_tiny", "psvit_2d_small", "deit_tiny", "deit_small",
            "psvit_micro"} <= names
    assert psvit.list_models("deit_*") == ["deit_small", "deit_tiny"]


def test_unknown_variant_suggests_close_names():
    with pytest.raises(UnknownVariantError, match="Did you mean psvit_micro"):
        psvit.create_model("psvit_mirco")


def test_create_model_splits_overrides_from_build_options():
    m = psvit.create_model("psvit_micro", num_classes=3, exportable=True, shared_attention="qk")
    assert m.cfg.num_classes == 3 and m.exportable and m.shared_attention == ("qk", "qk", "qk")
    assert m.head.out_features == 3
    assert m.variant == "psvit_micro"


def test_exportable_refuses_fused_attention():
    with pytest.raises(psvit.ConfigError, match="explicit attention"):
        psvit.create_model("psvit_micro", exportable=True, fused_attention=True)


def test_bad_shared_attention_mode():
    with pytest.raises(psvit.ConfigError, match="shared_attention"):
        psvit.create_model("psvit_micro", shared_attention=("map", "qk"))
    with pytest.raises(psvit.ConfigError, match="shared_attention"):
        psvit.create_model("psvit_micro", shared_attention="flash")


def test_config_object_is_accepted():
    cfg = psvit.get_config("psvit_micro")
    m = psvit.create_model(cfg, num_classes=4)
    assert m.cfg == cfg.replace(num_classes=4)
    assert torch.is_tensor(m.pos_embed)
