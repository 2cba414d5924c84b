"""psvit.search: the compact set, the supernet, the latency model, the search loop, the resumable pipeline
and `psvit-export search`'s error paths."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import psvit
from psvit.cli import main
from psvit.config import PSViTConfig
from psvit.search import Candidate, SearchSpace, Supernet
from psvit.search.errors import SearchError
from psvit.search.evolution import Evaluated, Evolution, pareto_front
from psvit.search.latency import (
    LatencyModel, LatencyTarget, calibration_design, component_counts, component_universe, fit_latency_model,
)

MICRO = psvit.get_config("psvit_micro")
DATA = Path(__file__).parent / "data"


# ---- the space ----------------------------------------------------------------------------------
def test_space_counts_every_point_once_and_every_point_is_a_valid_config():
    space = SearchSpace(MICRO)
    points = list(space.enumerate())
    assert len(points) == space.size() == 27 * 3 * 9  # (1 + 2)^3 depth/sharing x 3 kind sequences x 9 ops
    assert len({c.key for c in points}) == len(points)
    for c in points:
        cfg = space.to_config(c)  # PSViTConfig validates the compact set itself
        assert all(cfg.stage_of_block(b) == cfg.stage_of_block(b - 1) for b in cfg.share)  # never a first block
        assert space.from_config(cfg) == c
        assert cfg.dims == MICRO.dims and cfg.heads == MICRO.heads and cfg.img_size == MICRO.img_size
    assert {c.pool_kinds for c in points} == {("2d", "2d"), ("2d", "1d"), ("1d", "1d")}  # never 2d after 1d


def test_sampling_and_breeding_stay_in_the_space():
    space = SearchSpace(MICRO.replace(depths=(2, 3, 2), share=()))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        a, b = space.sample(rng), space.sample(rng)
        for c in (a, space.mutate(a, rng, 0.5), space.crossover(a, b, rng)):
            space.check(c)
            seen.add(c.key)
    assert len(seen) > 200  # the draws explore the space
    assert space.from_config(psvit.get_config("psvit_micro").replace(depths=(2, 3, 2), share=(3, 4))).share == ((), (1, 2), ())


def test_a_foreign_config_is_not_a_candidate():
    with pytest.raises(SearchError, match="outside the searched fields"):
        SearchSpace(MICRO).from_config(MICRO.replace(dims=(64, 64, 128), heads=(4, 4, 8)))


def test_every_sampled_config_builds_and_classifies():
    space = SearchSpace(MICRO)
    rng = np.random.default_rng(1)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(6):
        model = psvit.create_model(space.to_config(space.sample(rng))).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 10)


@pytest.mark.slow
def test_sampled_configs_export_with_zero_shape_ops_and_pass_parity(tmp_path):
    """One candidate per pooling-kind sequence, all three ops among them, sharing in two stages."""
    from psvit.export import export_onnx

    space = SearchSpace(MICRO)
    picks = [Candidate((2, 2, 2), ("2d", "2d"), ("conv", "max"), ((1,), (1,), ())),
             Candidate((1, 2, 2), ("2d", "1d"), ("avg", "conv"), ((), (1,), (1,))),
             Candidate((2, 1, 2), ("1d", "1d"), ("max", "avg"), ((1,), (), (1,)))]
    for i, c in enumerate(picks):
        torch.manual_seed(i)
        ckpt = psvit.save_checkpoint(psvit.create_model(space.to_config(c)), tmp_path / f"c{i}.safetensors")
        result = export_onnx(ckpt, tmp_path / f"c{i}.onnx", count=3)  # raises on a failed check or parity
        assert sum(result.graph.shape_ops.values()) == 0 and result.graph.ok
        assert result.graph.softmax == space.to_config(c).num_attention_maps
        assert all(v.passed for v in result.verification) and result.verification[-1].worst_rel_l2 <= 1e-5


# ---- the supernet -------------------------------------------------------------------------------
@pytest.mark.parametrize("depths", [(2, 2, 2), (1, 3, 2)])
def test_supernet_path_computes_the_extracted_standalone_model(depths):
    space = SearchSpace(MICRO.replace(depths=depths, share=()))
    torch.manual_seed(0)
    net = Supernet(space).eval()
    for p in net.parameters():  # non-trivial weights everywhere (biases, norms, pools)
        p.data.add_(torch.randn_like(p) * 0.02)
    rng = np.random.default_rng(3)
    x = torch.randn(3, 3, 32, 32)
    paths = [space.sample(rng) for _ in range(3)] + [space.largest(), space.smallest()]
    if depths == (1, 3, 2):
        paths.append(Candidate((1, 3, 2), ("1d", "1d"), ("max", "avg"), ((), (1, 2), (1,))))  # a chain of two sharers
    for path in paths:
        with torch.no_grad():
            ref = net(x, path)
            for options in ({}, {"exportable": True, "shared_attention": "qk"}):
                model = net.extract(path, **options)
                assert model.cfg == space.to_config(path)
                torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_sharing_blocks_inherit_the_v_part_of_the_supernet_projection():
    space = SearchSpace(MICRO)
    net = Supernet(space)
    path = Candidate((2, 2, 2), ("2d", "2d"), ("conv", "conv"), ((), (1,), ()))
    model = net.extract(path)
    dim = MICRO.dims[1]
    qkv = net.blocks[MICRO.stage_starts[1] + 1].attn.qkv.weight
    assert torch.equal(model.blocks[3].attn.v.weight, qkv[2 * dim:])
    assert not hasattr(model.blocks[3].attn, "qkv")


def test_absorb_is_the_inverse_of_extract():
    """Warm start: a trained stand-alone model copied into the supernet comes back out unchanged."""
    space = SearchSpace(MICRO)
    net = Supernet(space)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    path = Candidate((2, 2, 1), ("2d", "1d"), ("avg", "conv"), ((1,), (1,), ()))
    torch.manual_seed(5)
    trained = psvit.create_model(space.to_config(path))
    assert net.absorb(trained, path) == len(trained.state_dict())
    back = net.extract(path).state_dict()
    assert all(torch.equal(back[k], v) for k, v in trained.state_dict().items())
    after = net.state_dict()
    assert torch.equal(after["blocks.1.attn.qkv.weight"][:128], before["blocks.1.attn.qkv.weight"][:128])  # Q/K kept
    assert torch.equal(after["blocks.5.mlp.fc1.weight"], before["blocks.5.mlp.fc1.weight"])  # not on the path
    assert torch.equal(after["pools.0_2d_conv.pool.weight"], before["pools.0_2d_conv.pool.weight"])
    assert not torch.equal(after["pools.0_2d_avg.cls_proj.weight"], before["pools.0_2d_avg.cls_proj.weight"])


def test_supernet_trains_every_pooling_module_it_samples():
    space = SearchSpace(MICRO)
    net = Supernet(space).train()
    path = Candidate((1, 2, 1), ("2d", "1d"), ("max", "conv"), ((), (1,), ()))
    net(torch.randn(2, 3, 32, 32), path).sum().backward()
    assert net.pools["0_2d_max"].cls_proj.weight.grad is not None
    assert net.pools["1_1d_conv"].pool.weight.grad is not None
    assert net.pools["0_2d_conv"].pool.weight.grad is None  # not on the path
    assert net.blocks[MICRO.stage_starts[2] + 1].attn.qkv.weight.grad is None  # stage 2 runs one block


# ---- the latency model --------------------------------------------------------------------------
ORT = LatencyTarget(backend="onnxruntime", device="cpu", batch=1, threads=1)


def test_components_name_token_count_width_and_sharing_role():
    counts = component_counts(MICRO, ORT)
    assert counts["block own n=65 d=64 h=4"] == 2
    assert counts["block own n=17 d=96 h=6"] == 1 and counts["block share-map n=17 d=96 h=6"] == 1
    assert counts["pool 2d/conv n=65->17 d=64->96"] == 1
    torch_counts = component_counts(MICRO, LatencyTarget(backend="torch"))
    assert torch_counts["block provide n=17 d=96 h=6"] == 1  # eager PyTorch materialises a shared map
    universe = component_universe(SearchSpace(MICRO), ORT)
    assert set(counts) <= set(universe)
    assert "block share-map n=9 d=128 h=8" in universe  # 2d then 1d: 16 -> 8 patch tokens


def _synthetic_timings(space, design, noise, seed=0):
    """Latencies from known per-component costs, with multiplicative noise."""
    rng = np.random.default_rng(seed)
    universe = component_universe(space, ORT)
    costs = {k: float(rng.uniform(0.01, 0.05)) for k in universe}
    def true(cfg):
        return 0.08 + sum(n * costs[k] for k, n in component_counts(cfg, ORT).items())
    cfgs = [space.to_config(c) for c in design]
    measured = [true(c) * (1 + rng.normal(0, noise)) for c in cfgs]
    return true, cfgs, measured, universe


def test_latency_fit_recovers_exact_component_costs():
    space = SearchSpace(MICRO)
    design = calibration_design(space, ORT, None, np.random.default_rng(0))
    cover = {k: sum(k in component_counts(space.to_config(c), ORT) for c in design) for k in component_universe(space, ORT)}
    assert min(cover.values()) >= 3  # every component measured in at least three candidates
    true, cfgs, measured, universe = _synthetic_timings(space, design, noise=0.0)
    model = fit_latency_model([component_counts(c, ORT) for c in cfgs], measured, ORT, names=universe)
    assert max(abs(e) for e in model.loo_rel_errors) < 1e-9
    rng = np.random.default_rng(5)
    for _ in range(50):
        cfg = space.to_config(space.sample(rng))
        assert model.predict(cfg, ORT) == pytest.approx(true(cfg), rel=1e-9)


def test_latency_model_stated_error_covers_noisy_fresh_candidates():
    """With 3% timing noise the stated error (LOO p90) bounds most fresh predictions, as it claims."""
    space = SearchSpace(MICRO)
    design = calibration_design(space, ORT, None, np.random.default_rng(0))
    true, cfgs, measured, universe = _synthetic_timings(space, design, noise=0.03)
    model = fit_latency_model([component_counts(c, ORT) for c in cfgs], measured, ORT, names=universe)
    assert 0.01 < model.stated_error < 0.15
    rng = np.random.default_rng(9)
    fresh = [space.to_config(space.sample(rng)) for _ in range(100)]
    errors = [abs(model.predict(c, ORT) / (true(c) * (1 + rng.normal(0, 0.03))) - 1) for c in fresh]
    assert np.mean(np.array(errors) <= model.stated_error * 1.5) >= 0.8


def test_recorded_micro_calibration_predicts_the_measured_micro_model():
    """On timings recorded on ONNX Runtime CPU (benchmarks/search_micro.py): the refit reproduces the stored
    model, its prediction is the sum of the components of psvit_micro, and that sum matches psvit_micro's
    latency measured in the same session within the model's stated error (x2 for the noise of a shared
    2-core machine, which the LOO error itself was measured under)."""
    rec = json.loads((DATA / "search_latency_micro.json").read_text())
    space = SearchSpace(MICRO)
    cfgs = [space.to_config(Candidate.from_dict(c)) for c in rec["candidates"]]
    model = fit_latency_model([component_counts(c, ORT) for c in cfgs], rec["latency_ms"], ORT,
                              names=sorted(rec["model"]["costs_ms"]))
    stored = LatencyModel.from_dict(rec["model"])
    assert model.overhead_ms == pytest.approx(stored.overhead_ms, rel=1e-6, abs=1e-9)
    assert model.stated_error == pytest.approx(stored.stated_error, rel=1e-6)
    by_hand = stored.overhead_ms + sum(n * stored.costs_ms[k] for k, n in component_counts(MICRO, ORT).items())
    predicted = stored.predict(MICRO, ORT)
    assert predicted == pytest.approx(by_hand)
    assert abs(predicted / rec["psvit_micro_measured_ms"] - 1) <= 2 * stored.stated_error


def test_uncalibrated_components_are_refused():
    model = LatencyModel(target=ORT.to_dict(), costs_ms={"block own n=65 d=64 h=4": 0.1}, overhead_ms=0.0)
    with pytest.raises(SearchError, match="not calibrated"):
        model.predict(MICRO, ORT)


# ---- the search loop ----------------------------------------------------------------------------
def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.6), (1.5, 0.4), (2.0, 0.7), (3.0, 0.7), (0.5, 0.1)]
    assert pareto_front(pts) == [5, 0, 3]


def _fake_accuracy(c: Candidate) -> float:
    """Deterministic, architecture-dependent pseudo accuracy."""
    h = int(hashlib.sha256(c.key.encode()).hexdigest()[:8], 16) / 16**8
    return round(0.3 + 0.1 * sum(c.depths) + 0.05 * h, 6)


def _fake_latency(c: Candidate) -> float:
    return 0.1 * sum(c.depths) - 0.02 * sum(len(s) for s in c.share) + (0.01 if "conv" in c.pool_ops else 0.0)


class Interrupt(Exception):
    pass


def _interrupt_at(stage: str, step: int):
    def hook(s: str, i: int) -> None:
        if (s, i) == (stage, step):
            raise Interrupt
    return hook


def test_evolution_resumed_after_an_interruption_ends_with_the_same_front(tmp_path):
    space = SearchSpace(MICRO.replace(depths=(2, 3, 2), share=()))
    def evo():
        return Evolution(space, _fake_accuracy, _fake_latency, budget_ms=0.55, population=8, generations=5, seed=4)
    whole = evo().run(tmp_path / "a.json")
    with pytest.raises(Interrupt):
        evo().run(tmp_path / "b.json", on_checkpoint=_interrupt_at("search", 2))
    assert json.loads((tmp_path / "b.json").read_text())["generation"] == 2
    resumed = evo().run(tmp_path / "b.json")
    assert resumed["archive"] == whole["archive"] and resumed["pareto"] == whole["pareto"]
    assert all(_fake_latency(Evaluated.from_dict(d).candidate) <= 0.55 for d in whole["archive"])
    other_seed = Evolution(space, _fake_accuracy, _fake_latency, 0.55, 8, 5, seed=5).run(tmp_path / "c.json")
    assert other_seed["archive"] != whole["archive"]


def test_small_spaces_are_searched_exhaustively():
    space = SearchSpace(MICRO.replace(depths=(1, 2), dims=(64, 96), heads=(4, 6), pool_kinds=("2d",),
                                      pool_ops=("conv",), share=()))
    assert space.size() == 1 * 3 * 2 * 3
    evo = Evolution(space, _fake_accuracy, _fake_latency, budget_ms=0.25, population=5, generations=4, seed=0)
    assert evo.method == "exhaustive"
    state = evo.run(Path(__import__("tempfile").mkdtemp()) / "e.json")
    feasible = [c for c in space.enumerate() if _fake_latency(c) <= 0.25]
    assert sorted(d["candidate"]["depths"] + [d["accuracy"]] for d in state["archive"]) == sorted(
        list(c.depths) + [_fake_accuracy(c)] for c in feasible)
    pts = [(_fake_latency(Evaluated.from_dict(d).candidate), d["accuracy"]) for d in state["archive"]]
    assert state["pareto"] == pareto_front(pts)


# ---- the pipeline -------------------------------------------------------------------------------
TINY_TARGET = LatencyTarget(backend="onnxruntime", device="cpu", batch=1, threads=1, warmup=1, iters=2, rounds=2)


def _tiny_settings(**kw):
    from psvit.search.pipeline import SearchSettings

    base = dict(base="psvit_micro", latency_budget_ms=100.0, target=TINY_TARGET, supernet_epochs=2, population=4,
                generations=2, seed=0, batch_size=16, threads=1, winner_init="inherit", winner_epochs=0,
                calibration_size=4)
    return SearchSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny_data():
    from psvit.data.synthetic import load_synthetic
    from psvit.preprocessing import Preprocess

    return load_synthetic(70, 0, Preprocess.from_config(MICRO))


CLI_RUN = ["search", "--base", "psvit_micro", "--data", "synthetic", "--synthetic-count", "70",
           "--latency-budget-ms", "100", "--supernet-epochs", "2", "--population", "4", "--generations", "2",
           "--batch-size", "16", "--threads", "1", "--winner-init", "inherit", "--winner-epochs", "0",
           "--calibration-size", "4"]


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    """A whole search through the CLI with a tiny schedule: real latency measurements on ONNX Runtime CPU,
    supernet, search, re-measured front, winner, results."""
    out = tmp_path_factory.mktemp("search") / "run"
    assert main([*CLI_RUN, "--out", str(out)]) == 0
    return out, json.loads((out / "search.json").read_text())


@pytest.mark.slow
def test_search_writes_results_and_a_normal_checkpoint(finished_search, tmp_path):
    out, saved = finished_search
    assert set(saved["candidates"][0]) >= {"config", "macs", "params", "latency_ms", "latency_source", "accuracy"}
    assert (saved["backend"], saved["device"], saved["batch"]) == ("onnxruntime", "cpu", 1)
    assert "torch" in saved["versions"] and "onnxruntime" in saved["versions"]
    for c in saved["candidates"]:
        cfg = PSViTConfig.from_dict(c["config"])
        assert c["macs"] > 0 and c["params"] == psvit.model_stats(cfg).params
        assert c["latency_source"] in ("measured", "predicted") and c["latency_ms"] > 0
        assert 0.0 <= c["accuracy"] <= 1.0
    assert all(saved["candidates"][i]["latency_source"] == "measured" for i in saved["pareto"])  # front re-measured
    best = saved["candidates"][saved["best"]]
    assert saved["best"] in saved["pareto"]
    # inherited weights, no fine-tuning: the stand-alone model scores what the supernet scored
    assert best["standalone_accuracy"] == pytest.approx(best["accuracy"], abs=1.01 / saved["split"]["heldout_images"])
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = psvit.load_checkpoint(out / "best.safetensors")
    assert ckpt.config.to_dict() == best["config"] and ckpt.class_names == saved["classes"]
    assert ckpt.metadata["search"]["candidate"] == best["candidate"]
    from psvit.export import export_onnx

    result = export_onnx(out / "best.safetensors", tmp_path / "best.onnx", count=2)  # as it is, no options
    assert sum(result.graph.shape_ops.values()) == 0 and result.verification[-1].passed


@pytest.mark.slow
def test_interrupted_and_resumed_search_gives_the_same_front(finished_search, tiny_data, tmp_path):
    """The same search (its latency calibration copied, as if interrupted after it), interrupted during the
    supernet training and during the search, then resumed: the same candidates, accuracies and front."""
    from psvit.search.pipeline import run_search

    from psvit.search.pipeline import SearchSettings

    done, _ = finished_search
    settings = SearchSettings.from_dict(json.loads((done / "settings.json").read_text())["settings"])
    out = tmp_path / "run"
    out.mkdir()
    for name in ("settings.json", "latency.json"):
        shutil.copy(done / name, out / name)
    for stage, step in (("supernet", 1), ("search", 1), ("search", 2)):
        with pytest.raises(Interrupt):
            run_search(settings, tiny_data, out, on_checkpoint=_interrupt_at(stage, step))
    a = json.loads((done / "evolution.json").read_text())
    b = json.loads((out / "evolution.json").read_text())
    assert b["archive"] == a["archive"] and b["population"] == a["population"]
    assert pareto_front([(d["predicted_ms"], d["accuracy"]) for d in b["archive"]]) == json.loads(
        (done / "search.json").read_text())["pareto"]


def test_a_folder_of_another_search_is_refused(tiny_data, tmp_path):
    from psvit.search.pipeline import prepare_folder, settings_record

    out = tmp_path / "s"
    prepare_folder(out, settings_record(_tiny_settings(), tiny_data))
    with pytest.raises(SearchError, match="other settings .*latency_budget|other settings"):
        prepare_folder(out, settings_record(_tiny_settings(latency_budget_ms=5.0), tiny_data))
    assert prepare_folder(out, settings_record(_tiny_settings(), tiny_data)) is True  # the same: resumed


def test_a_budget_no_candidate_meets_is_refused_with_the_fastest_figure(tiny_data, tmp_path):
    from psvit.search.errors import BudgetError
    from psvit.search.pipeline import prepare_folder, run_search, settings_record

    settings = _tiny_settings(latency_budget_ms=0.001)
    out = tmp_path / "s"
    prepare_folder(out, settings_record(settings, tiny_data))
    space = SearchSpace(MICRO)
    universe = component_universe(space, TINY_TARGET)
    model = LatencyModel(target=TINY_TARGET.to_dict(), costs_ms={k: 0.01 for k in universe}, overhead_ms=0.1)
    (out / "latency.json").write_text(json.dumps({"candidates": [], "latency_ms": [], "model": model.to_dict()}))
    with pytest.raises(BudgetError, match=r"fastest is predicted at 0\.15 ms"):
        run_search(settings, tiny_data, out, plot=False)
    assert not (out / "supernet.pt").exists()


def test_a_warm_start_outside_the_space_is_refused(tiny_data, tmp_path):
    from psvit.search.pipeline import prepare_folder, run_search, settings_record

    foreign = psvit.save_checkpoint(psvit.create_model(MICRO.replace(dims=(64, 64, 128), heads=(4, 4, 8))),
                                    tmp_path / "foreign.safetensors")
    settings = _tiny_settings(supernet_init=str(foreign))
    out = tmp_path / "s"
    prepare_folder(out, settings_record(settings, tiny_data))
    universe = component_universe(SearchSpace(MICRO), TINY_TARGET)
    model = LatencyModel(target=TINY_TARGET.to_dict(), costs_ms={k: 0.01 for k in universe}, overhead_ms=0.1)
    (out / "latency.json").write_text(json.dumps({"candidates": [], "latency_ms": [], "model": model.to_dict()}))
    with pytest.raises(SearchError, match="not a candidate of the space"):
        run_search(settings, tiny_data, out, plot=False)
    assert not (out / "supernet.pt").exists()


# ---- CLI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--latency-budget-ms", "0"], "positive number of milliseconds"),
        (["--latency-budget-ms", "-3"], "positive number of milliseconds"),
        (["--latency-budget-ms", "nan"], "positive number of milliseconds"),
        (["--data", "/no/such/folder"], "does not exist"),
        (["--out", "/no/such/parent/run"], "does not exist"),
        (["--out", "{file}"], "is a file"),
        (["--out", "{busy}"], "not empty and holds no search"),
        (["--backend", "tensorrt"], "use --device cuda"),
        (["--base", "psvit_mikro"], "Did you mean psvit_micro"),
        (["--population", "1"], "--population must be at least 2"),
    ],
)
def test_cli_errors_exit_2_with_a_clear_message(args, message, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("x")
    defaults = {"--base": "psvit_micro", "--data": "synthetic", "--latency-budget-ms": "1", "--out": str(tmp_path / "run"),
                "--synthetic-count": "20"}
    given = dict(zip(args[::2], args[1::2]))
    merged = {**defaults, **given}
    if merged["--data"] != "synthetic":
        merged.pop("--synthetic-count")
    argv = ["search"] + [x for k, v in merged.items() for x in (k, v.replace("{file}", str(tmp_path / "file.txt"))
                                                                .replace("{busy}", str(tmp_path / "busy")))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
