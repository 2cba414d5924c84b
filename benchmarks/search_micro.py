"""The architecture search measured: ranking quality, latency model, outcome and cost (psvit_micro, CPU).

One command runs every stage; each stage saves its result in ``--work`` and is skipped when re-run, so an
interrupted run continues. Stages:

1. budget    psvit_micro's latency on the target (ONNX Runtime CPU, batch 1, 1 thread): the search's budget
             ("no more measured latency than the hand-designed model").
2. search    ``psvit.search.run_search`` on the synthetic set (8000 images, seed 0, 20% held out), wall time
             of each stage (cost); the winner is trained from scratch with the demo model's recipe.
3. baseline  psvit_micro trained with the same recipe on the same split.
4. inherit   the winner fine-tuned from its supernet weights with the same recipe (vs from scratch).
5. test      held-out split and a fresh synthetic test set (seed 12345, never seen by search or training).
6. latency   winner vs psvit_micro measured side by side (interleaved rounds).
7. ranking   Kendall tau between supernet-inherited and stand-alone accuracy over candidates spread over the
             space (evenly spaced quantiles of the supernet accuracy of random candidates).
8. latmodel  fresh random candidates (not in the calibration set) measured on the target: share predicted
             within +-10%, and the ranking by MACs vs the ranking by measured latency.
9. digits    a second image folder the search never saw: scikit-learn's bundled ``load_digits`` (1797 real
             8x8 handwritten digits, written as PNGs, resized to 32x32 by the model's preprocessing); the
             winner's architecture and psvit_micro trained alike.

    nice -n 10 python benchmarks/search_micro.py --json benchmarks/results/search_micro.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either list counted as neither concordant nor discordant)."""
    conc = disc = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif dx == dy:
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else math.nan


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


class Stages:
    """Results of finished stages, kept in ``work/stages.json``."""

    def __init__(self, work: Path) -> None:
        self.path = work / "stages.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, name: str, fn) -> Any:  # noqa: ANN001
        if name not in self.data:
            print(f"== {name} (load average {load_avg()})", flush=True)
            t0 = time.perf_counter()
            result = fn()
            result["seconds"] = round(time.perf_counter() - t0, 1)
            result["load_average_after"] = load_avg()
            self.data[name] = result
            _common.write_json(self.path, self.data, say=lambda _m: None)
        return self.data[name]


def write_digits(folder: Path) -> Path:
    """scikit-learn's bundled digits (0..16 grey levels) as an image folder of 8x8 PNGs."""
    from PIL import Image

    from psvit.errors import require

    datasets = require("sklearn.datasets", "scikit-learn", "the digits benchmark")
    if (folder / "done").is_file():
        return folder
    d = datasets.load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        sub = folder / f"digit_{label}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255.0 / 16.0).round().astype(np.uint8)).save(sub / f"{i:04d}.png")
    (folder / "done").write_text("1797\n")
    return folder


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("runs/search_micro"), help="stage results and the search folder")
    p.add_argument("--json", type=Path, default=None, help="write the summary JSON here")
    p.add_argument("--count", type=int, default=8000, help="synthetic images")
    p.add_argument("--supernet-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=20, help="stand-alone recipe (winner, baseline, inherit)")
    p.add_argument("--inherit-epochs", type=int, default=5, help="fine-tuning epochs from inherited weights")
    p.add_argument("--rank-pool", type=int, default=100, help="random candidates the ranking set is drawn from")
    p.add_argument("--rank-epochs", type=int, default=10, help="stand-alone epochs of the ranking candidates")
    p.add_argument("--rank-candidates", type=int, default=10)
    p.add_argument("--latency-candidates", type=int, default=24)
    p.add_argument("--digits-epochs", type=int, default=30)
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--train-threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="every training run's batch size")
    p.add_argument("--calibration-size", type=int, default=None, help="latency calibration set (default: the library's)")
    p.add_argument("--reuse-calibration", type=Path, default=None,
                   help="a latency.json of an earlier search with the same target: skips measuring the calibration set")
    p.add_argument("--supernet-init", default="demo",
                   help="warm-start checkpoint of the supernet ('' for none; 'demo' was trained on this very split)")
    p.add_argument("--supernet-lr", type=float, default=5e-4)
    p.add_argument("--eval-images", type=int, default=None, help="held-out images that rank candidates")
    p.add_argument("--baseline", choices=("demo", "retrain"), default="demo",
                   help="psvit_micro trained with the recipe: the bundled demo (trained with exactly this recipe "
                        "on this split; checked) or retrained here")
    p.add_argument("--no-refit", action="store_true",
                   help="latency model stage: do not re-measure the calibration set beside the fresh candidates")
    p.add_argument("--faster", type=float, default=0.8,
                   help="also train the best front member within this share of psvit_micro's latency (0: skip)")
    p.add_argument("--test-count", type=int, default=2000, help="fresh synthetic test images (seed 12345)")
    args = p.parse_args(argv)

    import torch

    import psvit
    from psvit.data import split_indices
    from psvit.data.image_folder import load_image_folder
    from psvit.data.synthetic import load_synthetic
    from psvit.preprocessing import Preprocess
    from psvit.runtime.bench import cpu_name
    from psvit.search import Candidate, SearchSpace, Supernet, SubnetView
    from psvit.search.latency import LatencyMeter, LatencyModel, LatencyTarget, component_counts, fit_latency_model
    from psvit.search.pipeline import SearchSettings, run_search
    from psvit.stats import count_macs
    from psvit.train import TrainRecipe, evaluate, train

    args.work.mkdir(parents=True, exist_ok=True)
    stages = Stages(args.work)
    base = psvit.get_config("psvit_micro")
    pre = Preprocess.from_config(base)
    target = LatencyTarget(backend="onnxruntime", device="cpu", batch=1, threads=1, rounds=15, iters=20)
    data = load_synthetic(args.count, 0, pre)
    tr_idx, ho_idx = split_indices(data.labels, 0.2, 0)
    train_data, heldout = data.subset(tr_idx), data.subset(ho_idx)
    recipe = TrainRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, seed=0, threads=args.train_threads, hflip=True)
    space = SearchSpace(base)

    budget = stages.run("budget", lambda: {"psvit_micro_ms": LatencyMeter(target).measure([base])[0]})
    budget_ms = budget["psvit_micro_ms"]

    def search() -> dict[str, Any]:
        settings = SearchSettings(
            base="psvit_micro", latency_budget_ms=round(budget_ms, 4), target=target,
            supernet_epochs=args.supernet_epochs, population=args.population, generations=args.generations,
            seed=0, threads=args.train_threads, winner_epochs=args.epochs, winner_init="scratch", batch_size=args.batch_size,
            calibration_size=args.calibration_size, supernet_init=args.supernet_init or None,
            supernet_lr=args.supernet_lr, eval_images=args.eval_images)
        if args.reuse_calibration is not None:
            from psvit.search.pipeline import LATENCY, prepare_folder, settings_record

            prepare_folder(args.work / "search", settings_record(settings, data))
            (args.work / "search" / LATENCY).write_text(args.reuse_calibration.read_text())
        t0 = time.perf_counter()
        rec = run_search(settings, data, args.work / "search", log=print, progress=False, command="benchmarks/search_micro.py")
        return {"wall_seconds": round(time.perf_counter() - t0, 1), "best": rec["best"],
                "candidate": rec["candidates"][rec["best"]], "reference": rec["reference"],
                "pareto": [rec["candidates"][i] for i in rec["pareto"]],
                "stage_seconds": {"latency_calibration": rec["latency_model"]["calibration_seconds"],
                                  "supernet": rec["supernet"]["seconds"], "search": rec["search"]["seconds"]},
                "evaluated": rec["search"]["evaluated"], "method": rec["search"]["method"],
                "latency_model": {k: rec["latency_model"][k] for k in ("stated_error", "calibration_candidates")},
                "supernet_history": rec["supernet"]["history"]}

    found = stages.run("search", search)
    win_cand = Candidate.from_dict(found["candidate"]["candidate"])
    win_cfg = space.to_config(win_cand)

    def supernet() -> Supernet:
        net = Supernet(space)
        state = torch.load(args.work / "search" / "supernet.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        return net.eval()

    fresh = load_synthetic(args.test_count, 12345, pre)

    def fit(model: torch.nn.Module, tr, ho, rec: TrainRecipe) -> tuple[torch.nn.Module, float]:  # noqa: ANN001
        result = train(model, tr, ho, pre, rec, progress=False)
        return model, result.final_top1

    def baseline() -> dict[str, Any]:
        if args.baseline == "demo":
            demo = psvit.load_checkpoint("demo")
            t = demo.metadata["training"]
            same = (demo.metadata["data"]["count"] == args.count and demo.metadata["data"]["seed"] == 0
                    and t["val_fraction"] == 0.2 and t["recipe"]["epochs"] == args.epochs
                    and t["recipe"]["batch_size"] == args.batch_size and t["recipe"]["lr"] == 1e-3)
            if not same:
                raise SystemExit("--baseline demo needs --count 8000 --epochs 20 --batch-size 64 (the demo's recipe)")
            return {"source": "bundled demo checkpoint (psvit_micro, this recipe, this split)",
                    "heldout_top1": evaluate(demo.model, heldout, pre), "test_top1": evaluate(demo.model, fresh, pre)}
        torch.manual_seed(0)
        model, top1 = fit(psvit.create_model(base), train_data, heldout, recipe)
        torch.save(model.state_dict(), args.work / "baseline.pt")
        return {"heldout_top1": top1, "test_top1": evaluate(model, fresh, pre)}

    base_res = stages.run("baseline", baseline)

    def winner_scratch() -> dict[str, Any]:
        ck = psvit.load_checkpoint(args.work / "search" / "best.safetensors")
        return {"heldout_top1": evaluate(ck.model, heldout, pre), "test_top1": evaluate(ck.model, fresh, pre),
                "recorded_heldout_top1": ck.metadata["training"]["heldout_top1"]}

    scratch = stages.run("winner_scratch", winner_scratch)

    def inherit() -> dict[str, Any]:
        model = supernet().extract(win_cand)
        inherited = evaluate(model, heldout, pre)
        rec = TrainRecipe(epochs=args.inherit_epochs, batch_size=args.batch_size, lr=args.supernet_lr, seed=0,
                          threads=args.train_threads, hflip=True)
        model, top1 = fit(model, train_data, heldout, rec)
        return {"inherited_heldout_top1": inherited, "inherited_test_top1": evaluate(supernet().extract(win_cand), fresh, pre),
                "epochs": args.inherit_epochs, "lr": args.supernet_lr, "heldout_top1": top1,
                "test_top1": evaluate(model, fresh, pre)}

    inh = stages.run("inherit", inherit)

    def latency() -> dict[str, Any]:
        t = LatencyTarget(backend="onnxruntime", device="cpu", batch=1, threads=1, rounds=15, iters=50)
        win_ms, base_ms = LatencyMeter(t).measure([win_cfg, base])
        t8 = LatencyTarget(backend="onnxruntime", device="cpu", batch=8, threads=1, rounds=9, iters=20)
        win8, base8 = LatencyMeter(t8).measure([win_cfg, base])
        return {"batch1": {"winner_ms": win_ms, "psvit_micro_ms": base_ms, "ratio": win_ms / base_ms},
                "batch8": {"winner_ms": win8, "psvit_micro_ms": base8, "ratio": win8 / base8},
                "macs": {"winner": count_macs(win_cfg), "psvit_micro": count_macs(base)}}

    lat = stages.run("latency", latency)

    def ranking() -> dict[str, Any]:
        net = supernet()
        rng = np.random.default_rng(7)
        pool: dict[str, Candidate] = {}
        while len(pool) < args.rank_pool:
            c = space.sample(rng)
            pool[c.key] = c
        ranking_set = heldout.subset(np.arange(min(args.eval_images or len(heldout), len(heldout))))
        scored = sorted(((evaluate(SubnetView(net, c), ranking_set, pre), k) for k, c in pool.items()))
        picks = np.unique(np.linspace(0, len(scored) - 1, args.rank_candidates).round().astype(int))
        rows = []
        rec = TrainRecipe(epochs=args.rank_epochs, batch_size=args.batch_size, lr=1e-3, seed=0, threads=args.train_threads, hflip=True)
        for n, i in enumerate(picks):
            acc, key = scored[int(i)]
            c = pool[key]
            torch.manual_seed(0)
            _, top1 = fit(psvit.create_model(space.to_config(c)), train_data, heldout, rec)
            rows.append({"candidate": c.to_dict(), "supernet_top1": acc, "standalone_top1": top1})
            print(f"ranking {n + 1}/{len(picks)}: supernet {acc:.3f} stand-alone {top1:.3f}", flush=True)
        tau = kendall_tau([r["supernet_top1"] for r in rows], [r["standalone_top1"] for r in rows])
        return {"kendall_tau": tau, "candidates": rows, "rank_epochs": args.rank_epochs,
                "supernet_accuracy_on": f"the first {len(ranking_set)} held-out images",
                "sampled": len(pool)}

    rank = stages.run("ranking", ranking)

    def latmodel() -> dict[str, Any]:
        search_dir = args.work / "search"
        cal = json.loads((search_dir / "latency.json").read_text())
        model = LatencyModel.from_dict(cal["model"])
        seen = {Candidate.from_dict(c).key for c in cal["candidates"]}
        rng = np.random.default_rng(11)
        picks: dict[str, Candidate] = {}
        while len(picks) < args.latency_candidates:
            c = space.sample(rng)
            if c.key not in seen:
                picks[c.key] = c
        cands = list(picks.values())
        cfgs = [space.to_config(c) for c in cands]
        cal_cfgs = [space.to_config(Candidate.from_dict(c)) for c in cal["candidates"]]
        # the calibration set measured again, interleaved with the fresh candidates: the model refitted on it
        # is judged under the very same machine load (the search's own model is reported too)
        if args.no_refit:
            measured, same_session = LatencyMeter(target).measure(cfgs), model
        else:
            both = LatencyMeter(target).measure(cal_cfgs + cfgs)
            cal_again, measured = both[:len(cal_cfgs)], both[len(cal_cfgs):]
            same_session = fit_latency_model([component_counts(c, target) for c in cal_cfgs], cal_again, target,
                                             names=sorted(model.costs_ms))
        predicted = [same_session.predict(c, target) for c in cfgs]
        predicted_search = [model.predict(c, target) for c in cfgs]
        rel_search = [pr / m - 1 for pr, m in zip(predicted_search, measured)]
        macs = [count_macs(c) for c in cfgs]
        rel = [pr / m - 1 for pr, m in zip(predicted, measured)]
        return {"refit_same_session": not args.no_refit,
                "candidates": [{"candidate": c.to_dict(), "measured_ms": m, "predicted_ms": pr,
                                "predicted_ms_search_model": ps, "macs": mc,
                                "components": dict(component_counts(cfg, target))}
                               for c, cfg, m, pr, ps, mc in zip(cands, cfgs, measured, predicted, predicted_search, macs)],
                "calibration_candidates": len(cal_cfgs), "stated_error_same_session": same_session.stated_error,
                "search_model_within_10pct": float(np.mean(np.abs(rel_search) <= 0.10)),
                "search_model_mean_abs_rel_error": float(np.mean(np.abs(rel_search))),
                "within_10pct": float(np.mean(np.abs(rel) <= 0.10)), "mean_abs_rel_error": float(np.mean(np.abs(rel))),
                "max_abs_rel_error": float(np.max(np.abs(rel))), "stated_error": model.stated_error,
                "kendall_tau_macs_vs_measured": kendall_tau(macs, measured),
                "kendall_tau_predicted_vs_measured": kendall_tau(predicted, measured)}

    lm = stages.run("latmodel", latmodel)

    def digits() -> dict[str, Any]:
        folder = write_digits(args.work / "digits")
        d = load_image_folder(folder, pre)
        tr, ho = split_indices(d.labels, 0.2, 0)
        rec = TrainRecipe(epochs=args.digits_epochs, batch_size=args.batch_size, lr=1e-3, seed=0, threads=args.train_threads,
                          hflip=False)
        out = {"images": len(d), "source": "sklearn.datasets.load_digits (bundled with scikit-learn)"}
        for name, cfg in (("winner", win_cfg), ("psvit_micro", base)):
            torch.manual_seed(0)
            _, top1 = fit(psvit.create_model(cfg, num_classes=d.num_classes), d.subset(tr), d.subset(ho), rec)
            out[name] = top1
        return out

    dig = stages.run("digits", digits)

    def faster() -> dict[str, Any]:
        """The most accurate front member at <= --faster of psvit_micro's measured latency, trained like the winner."""
        rec_s = json.loads((args.work / "search" / "search.json").read_text())
        limit = args.faster * rec_s["reference"]["latency_ms"]
        pick = max((rec_s["candidates"][i] for i in rec_s["pareto"] if rec_s["candidates"][i]["latency_ms"] <= limit),
                   key=lambda c: c["accuracy"])
        cand = Candidate.from_dict(pick["candidate"])
        cfg = space.to_config(cand)
        torch.manual_seed(0)
        model, top1 = fit(psvit.create_model(cfg), train_data, heldout, recipe)
        t = LatencyTarget(backend="onnxruntime", device="cpu", batch=1, threads=1, rounds=15, iters=50)
        ms, base_ms = LatencyMeter(t).measure([cfg, base])
        return {"candidate": pick["candidate"], "supernet_top1": pick["accuracy"], "heldout_top1": top1,
                "test_top1": evaluate(model, fresh, pre), "latency_ms": ms, "psvit_micro_ms": base_ms,
                "ratio": ms / base_ms, "limit_ratio": args.faster}

    fast = stages.run("faster", faster) if args.faster else None

    summary = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_end": load_avg()},
        "target": target.to_dict(), "budget_ms": budget_ms, "settings": vars(args) | {"work": str(args.work),
                                                                                     "json": str(args.json)},
        "stages": stages.data,
    }
    print(f"\nsearch: {found['method']}, {found['evaluated']} evaluated, wall {found['wall_seconds']:.0f}s "
          f"(calibration {found['stage_seconds']['latency_calibration']}s, supernet {found['stage_seconds']['supernet']}s, "
          f"search {found['stage_seconds']['search']}s)")
    print(f"winner {win_cand.key}")
    print(f"held-out top-1: winner {scratch['heldout_top1']:.4f} (inherit+finetune {inh['heldout_top1']:.4f}) vs "
          f"psvit_micro {base_res['heldout_top1']:.4f}")
    print(f"fresh test top-1: winner {scratch['test_top1']:.4f} (inherit {inh['test_top1']:.4f}) vs "
          f"psvit_micro {base_res['test_top1']:.4f}")
    print(f"latency b1: winner {lat['batch1']['winner_ms']:.4f} ms vs psvit_micro {lat['batch1']['psvit_micro_ms']:.4f} ms "
          f"({lat['batch1']['ratio']:.2f}x); b8 {lat['batch8']['ratio']:.2f}x")
    print(f"ranking: Kendall tau {rank['kendall_tau']:.3f} over {len(rank['candidates'])} candidates")
    print(f"latency model: {lm['within_10pct']:.0%} within +-10% over {len(lm['candidates'])}; tau MACs/measured "
          f"{lm['kendall_tau_macs_vs_measured']:.3f}, predicted/measured {lm['kendall_tau_predicted_vs_measured']:.3f}")
    print(f"digits: winner {dig['winner']:.4f} vs psvit_micro {dig['psvit_micro']:.4f}")
    if fast:
        print(f"faster front member {fast['candidate']}: held-out {fast['heldout_top1']:.4f}, test {fast['test_top1']:.4f}, "
              f"{fast['ratio']:.2f}x psvit_micro's latency")
    _common.write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
