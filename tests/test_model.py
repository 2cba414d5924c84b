"""PSViT model: shapes, token pooling, attention sharing semantics, modes, MACs."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import psvit
from psvit import model_stats
from psvit.model import SharedAttention

torch.manual_seed(0)


def micro(**kw):
    return psvit.create_model("psvit_micro", **kw).eval()


def _block_io(model, x):
    """Run the model; return the input and the output tokens of every block."""
    inputs, outputs = {}, {}
    hooks = [
        h
        for i, blk in enumerate(model.blocks)
        for h in (
            blk.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0])),
            blk.register_forward_hook(lambda m, args, out, i=i: outputs.__setitem__(i, out[0])),
        )
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return inputs, outputs


def _block_inputs(model, x):
    return _block_io(model, x)[0]


@pytest.mark.parametrize("name", ["psvit_micro", "psvit_2d_tiny", "psvit_1d_tiny", "deit_tiny"])
def test_tokens_and_widths_per_stage(name):
    m = psvit.create_model(name).eval()
    cfg = m.cfg
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    inputs = _block_inputs(m, x)
    for b, t in inputs.items():
        s = cfg.stage_of_block(b)
        assert tuple(t.shape) == (2, cfg.tokens[s], cfg.dims[s]), f"block {b}"
    assert m(x).shape == (2, cfg.num_classes)


def test_sharing_blocks_have_no_query_key_projection():
    m = micro()
    for b, blk in enumerate(m.blocks):
        names = {n for n, _ in blk.attn.named_parameters()}
        if b in m.cfg.share:
            assert isinstance(blk.attn, SharedAttention)
            assert names == {"v.weight", "v.bias", "proj.weight", "proj.bias"}
        else:
            assert {"qkv.weight", "qkv.bias"} <= names


def _attention_probs(block, x):
    """softmax(Q K^T / sqrt(d)) of a map-computing block for its input x: (B, H, N, N)."""
    a = block.attn
    qkv = a.qkv(block.norm1(x)).reshape(x.shape[0], a.tokens, 3, a.heads, a.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    return torch.softmax(q @ k.transpose(-2, -1) * a.scale, dim=-1)


@pytest.mark.parametrize("depths, share, owner, sharers", [((2, 2, 2), (3,), 2, (3,)), ((2, 3, 1), (3, 4), 2, (3, 4))])
def test_sharing_block_uses_the_map_of_its_owner(depths, share, owner, sharers):
    """Reference computation written out: out = proj(A_owner @ V_own); chains reuse the same map."""
    m = micro(depths=depths, share=share)
    x = torch.randn(2, 3, 32, 32)
    inputs, outputs = _block_io(m, x)
    with torch.no_grad():
        probs = _attention_probs(m.blocks[owner], inputs[owner])
        for b in sharers:
            blk, xin = m.blocks[b], inputs[b]
            a = blk.attn
            v = a.v(blk.norm1(xin)).reshape(2, a.tokens, a.heads, a.head_dim).transpose(1, 2)
            attn_out = a.proj((probs @ v).transpose(1, 2).reshape(2, a.tokens, a.dim))
            expected = xin + attn_out
            expected = expected + blk.mlp(blk.norm2(expected))
            torch.testing.assert_close(outputs[b], expected, rtol=1e-5, atol=1e-5)


def test_sharing_changes_the_function():
    """Sharing is not a no-op: the same weights with the sharer's own map give a different output."""
    shared = micro()
    x = torch.randn(2, 3, 32, 32)
    m_inputs = _block_inputs(shared, x)
    with torch.no_grad():
        own = _attention_probs(shared.blocks[2], m_inputs[3])  # block 2's projections on block 3's input
        prev = _attention_probs(shared.blocks[2], m_inputs[2])
    assert (own - prev).abs().max() > 1e-3


@pytest.mark.parametrize("exportable", [False, True])
@pytest.mark.parametrize("mode", ["map", "qk", ("map", "qk", "map")])
def test_all_build_modes_compute_the_same_function(exportable, mode):
    ref = micro(depths=(2, 3, 2), share=(3, 4, 6))
    x = torch.randn(3, 3, 32, 32)
    m = micro(depths=(2, 3, 2), share=(3, 4, 6), exportable=exportable, shared_attention=mode)
    m.load_state_dict(ref.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)


def _perturbed(m):
    """``m`` with non-trivial biases and norms (the initial ones are zeros and ones)."""
    with torch.no_grad():
        for p_ in m.parameters():
            p_.add_(0.05 * torch.randn_like(p_))
    return m


@pytest.mark.parametrize(("kind", "op", "depths", "share"), [
    ("2d", "conv", (2, 2, 2), (3, 5)),  # the last block shares an earlier block's map
    ("2d", "max", (2, 2, 2), ()),
    ("1d", "avg", (2, 2, 2), (1, 3, 5)),  # a chain of sharers in every stage
    ("1d", "conv", (2, 2, 2), (3,)),  # the last block computes its own map
    ("2d", "avg", (2, 3, 1), (3, 4)),  # the last stage has one block
    ("1d", "max", (3, 2, 1), (1, 2, 4)),
])
@pytest.mark.parametrize("mode", ["map", "qk"])
def test_token_major_exportable_layout_is_the_same_function(kind, op, depths, share, mode):
    """Exportable models run token-major, with the last block for the class token only: the same logits
    and the same final tokens as the eager (training) model, whatever pools and shares."""
    kw = dict(pool_kinds=kind, pool_ops=op, depths=depths, share=share, shared_attention=mode)
    ref = _perturbed(micro(**kw))
    m = micro(**kw, exportable=True)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        features = m.forward_features(x)
        assert features.shape == (5, m.cfg.tokens[-1], m.cfg.dims[-1])
        torch.testing.assert_close(features, ref.forward_features(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["deit_tiny", "psvit_1d_tiny", "psvit_2d_tiny"])
@pytest.mark.parametrize("mode", ["map", "qk"])
def test_registered_families_exportable_equals_training_model(name, mode):
    """One variant of each registered family (224 px; the small ones differ in width and depth only): the
    exportable build computes the training build's logits."""
    assert name in psvit.list_models()
    ref = _perturbed(psvit.create_model(name, num_classes=10, shared_attention=mode).eval())
    m = psvit.create_model(name, num_classes=10, exportable=True, shared_attention=mode).eval()
    m.load_state_dict(ref.state_dict())
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["2d", "1d"])
@pytest.mark.parametrize("op", ["conv", "max", "avg"])
def test_pooling_kinds_and_ops(kind, op):
    m = micro(pool_kinds=kind, pool_ops=op).train()
    cfg = m.cfg
    x = torch.randn(2, 3, 32, 32)
    y = m(x)
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    pool = m.pools[0]
    tokens = torch.randn(2, cfg.tokens[0], cfg.dims[0])
    with torch.no_grad():
        out = pool(tokens)
        assert out.shape == (2, cfg.tokens[1], cfg.dims[1])
        # The class token goes through its own Linear only; patch tokens never leak into it.
        perturbed = tokens.clone()
        perturbed[:, 1:] += 1.0
        torch.testing.assert_close(pool(perturbed)[:, 0], out[:, 0])
        torch.testing.assert_close(out[:, 0], pool.cls_proj(tokens[:, 0]))


def test_2d_max_pooling_pools_the_token_grid():
    m = micro(pool_ops="max", dims=(64, 64, 64), heads=(4, 4, 4))
    pool = m.pools[0]
    assert pool.proj is None  # width unchanged: no projection
    tokens = torch.randn(1, 65, 64)
    grid = tokens[:, 1:].transpose(1, 2).reshape(1, 64, 8, 8)
    expected = torch.nn.functional.max_pool2d(grid, 3, 2, 1).reshape(1, 64, 16).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(pool(tokens)[:, 1:], expected)


def test_torch_export_with_dynamic_batch_needs_no_shape_guards():
    m = micro(exportable=True)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(m, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"x": {0: batch}})
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), m(x), rtol=1e-5, atol=1e-5)


def test_wrong_input_shape_is_explained():
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, 32, 32\)"):
        micro()(torch.randn(1, 3, 64, 64))


def _class_only_saving(cfg, mode: str) -> int:
    """MACs the last block skips when it computes the class token only (exportable ``forward``): for the
    n - 1 patch tokens' queries, the output projection, the MLP and, in a block with its own map, the Q
    projection, Q·Kᵀ and A·V. K and V are projected for every token, and a sharer's A·V runs for every row
    (its map feeds the product directly)."""
    n, d = cfg.tokens[-1], cfg.dims[-1]
    per_query = d * d + 2 * d * int(d * cfg.mlp_ratio)  # proj, fc1 + fc2
    if cfg.depth - 1 not in cfg.share:
        per_query += d * d + 2 * n * d  # Q projection, Q·Kᵀ and A·V
    return (n - 1) * per_query


@pytest.mark.parametrize("name", psvit.list_models())
@pytest.mark.parametrize("mode", ["map", "qk"])
def test_analytic_macs_match_torch_flop_counter(name, mode):
    with torch.device("meta"):
        m = psvit.create_model(name, exportable=True, shared_attention=mode)
        x = torch.empty(1, 3, m.cfg.img_size, m.cfg.img_size)
        with FlopCounterMode(display=False) as full:
            m.forward_head(m.forward_features(x))  # every token through every block
        with FlopCounterMode(display=False) as exported:
            m(x)  # what an export runs: the last block for the class token only
    stats = model_stats(m)
    assert stats.macs == full.get_total_flops() // 2
    assert stats.macs - exported.get_total_flops() // 2 == _class_only_saving(m.cfg, mode) > 0
    assert stats.params == sum(p.numel() for p in m.parameters())


def test_sharing_saves_parameters_and_macs():
    on, off = model_stats("psvit_2d_tiny"), model_stats("psvit_2d_tiny", share=())
    assert on.params < off.params and on.macs < off.macs
    assert on.attention_maps == 14 - 5 and off.attention_maps == 14
