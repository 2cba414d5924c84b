"""PSViTConfig: token counts from the config alone, compact-set validation, serialisation."""
import pytest

from psvit import ConfigError, PSViTConfig, get_config, list_models
from psvit.config import pooled_length


@pytest.mark.parametrize(
    "name, tokens",
    [
        ("psvit_2d_tiny", (196, 49, 16)),
        ("psvit_2d_small", (196, 49, 16)),
        ("psvit_1d_tiny", (196, 98, 49)),
        ("psvit_1d_small", (196, 98, 49)),
        ("deit_tiny", (196,)),
        ("deit_small", (196,)),
        ("psvit_micro", (64, 16, 4)),
    ],
)
def test_documented_patch_tokens_per_stage(name, tokens):
    cfg = get_config(name)
    assert cfg.patch_tokens == tokens
    assert cfg.tokens == tuple(t + 1 for t in tokens)


def test_pooled_length_matches_conv_arithmetic():
    import torch

    for n in range(1, 40):
        out = torch.nn.functional.max_pool1d(torch.zeros(1, 1, n), 3, 2, 1).shape[-1]
        assert pooled_length(n) == out


def test_named_psvit_variants_follow_the_rule():
    from psvit import model_stats

    deit = {"tiny": model_stats("deit_tiny").macs, "small": model_stats("deit_small").macs}
    for name in list_models("psvit_[12]d_*"):
        cfg = get_config(name)
        stats = model_stats(name)
        assert cfg.num_stages == 3 and len(cfg.pool_kinds) == 2
        assert all(d // h == 64 for d, h in zip(cfg.dims, cfg.heads)), "head width 64"
        ratio = stats.macs / deit[name.rsplit("_", 1)[1]]
        assert 0.85 <= ratio <= 1.15, f"{name}: {ratio:.3f} of DeiT MACs"
        assert cfg.share, "a default sharing pattern is part of every PSViT variant"
        assert not set(cfg.share) & set(cfg.stage_starts)


def test_overrides_and_string_broadcast():
    cfg = get_config("psvit_2d_tiny", pool_ops="max", share=(), num_classes=10)
    assert cfg.pool_ops == ("max", "max") and cfg.share == () and cfg.num_classes == 10
    assert get_config("psvit_2d_tiny", share=[9, 5]).share == (5, 9)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"share": (4,)}, "first block of stage 1"),
        ({"share": (0,)}, "first block of stage 0"),
        ({"share": (99,)}, "outside the 14 blocks"),
        ({"pool_kinds": ("1d", "2d")}, "do not form a square grid"),
        ({"pool_ops": ("conv", "median")}, "pool op 'median'"),
        ({"heads": (3, 5, 9)}, "not divisible by heads"),
        ({"depths": (4, 6)}, "one entry per stage"),
        ({"img_size": 230}, "not a multiple of patch_size"),
        ({"depths": (4, 0, 4)}, "at least one block"),
    ],
)
def test_configs_outside_the_compact_set_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        get_config("psvit_2d_tiny", **overrides)


def test_unknown_field_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown config field.*'dimz'"):
        get_config("psvit_2d_tiny", dimz=(1,))


def test_json_round_trip_and_map_owners():
    cfg = get_config("psvit_micro", share=(3, 5))
    again = PSViTConfig.from_json(cfg.to_json())
    assert again == cfg
    assert cfg.map_owner == (0, 1, 2, 2, 4, 4)
    assert cfg.num_attention_maps == 4
    chain = get_config("psvit_micro", depths=(2, 3, 1), share=(3, 4))
    assert chain.map_owner == (0, 1, 2, 2, 2, 5)
