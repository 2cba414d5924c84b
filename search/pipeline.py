"""``run_search``: the whole search in one resumable run, every stage saved in the output folder.

Stages and the files that mark them done (a re-run with the same settings skips what is there):

1. ``settings.json``   the options and the data fingerprint (a resume with others is refused)
2. ``latency.json``    calibration measurements on the target and the fitted latency model
3. ``supernet.pt``     the one-shot supernet (saved after every epoch)
4. ``evolution.json``  every evaluated candidate and the random stream (saved after every generation)
5. ``front.json``      the Pareto front and the base variant re-measured on the target (interleaved)
6. ``best.safetensors`` + ``winner.json``   the chosen candidate trained stand-alone, a normal checkpoint
7. ``search.json``, ``pareto.png``          the results
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..data import LabeledImages, check_fraction, split_indices
from ..preprocessing import Preprocess
from ..provenance import check_output_folder, package_versions, sha256_file, write_json
from ..registry import create_model, get_config
from ..stats import count_macs, model_stats
from ..train import TrainRecipe, evaluate, torch_threads, train, training_metadata
from .errors import BudgetError, SearchError
from .evolution import Evaluated, Evolution
from .latency import LatencyMeter, LatencyModel, LatencyTarget, calibrate, min_predicted
from .results import FORMAT, plot_pareto
from .space import Candidate, SearchSpace
from .supernet import Supernet, SubnetView
from .training import train_supernet

Log = Callable[[str], None]
Checkpointed = Callable[[str, int], None]
WINNER_INITS = ("inherit", "scratch")
SETTINGS, LATENCY, SUPERNET, EVOLUTION, FRONT, WINNER, BEST, RESULTS, PLOT = (
    "settings.json", "latency.json", "supernet.pt", "evolution.json", "front.json", "winner.json",
    "best.safetensors", "search.json", "pareto.png")


@dataclass(frozen=True)
class SearchSettings:
    """Everything that determines a search besides the data (``winner_epochs`` None: ``supernet_epochs``)."""

    base: str
    latency_budget_ms: float
    target: LatencyTarget = field(default_factory=LatencyTarget)
    supernet_epochs: int = 20
    population: int = 20
    generations: int = 10
    seed: int = 0
    val_fraction: float = 0.2
    batch_size: int = 64
    lr: float = 1e-3
    hflip: bool = True
    threads: int | None = None
    winner_epochs: int | None = None
    winner_init: str = "scratch"
    calibration_size: int | None = None
    eval_images: int | None = None
    train_device: str = "cpu"
    supernet_init: str | None = None
    supernet_lr: float | None = None

    def __post_init__(self) -> None:
        b = self.latency_budget_ms
        if not (isinstance(b, (int, float)) and math.isfinite(b) and b > 0):
            raise SearchError(f"--latency-budget-ms must be a positive number of milliseconds, got {b}")
        checks = (
            (self.population >= 2, f"--population must be at least 2, got {self.population}"),
            (self.generations >= 1, f"--generations must be at least 1, got {self.generations}"),
            (self.supernet_epochs >= 1, f"--supernet-epochs must be at least 1, got {self.supernet_epochs}"),
            (self.winner_epochs is None or self.winner_epochs >= 0,
             f"--winner-epochs must be >= 0 (0: no training, inherited weights), got {self.winner_epochs}"),
            (self.winner_init in WINNER_INITS, f"--winner-init must be inherit or scratch, got {self.winner_init!r}"),
            (not (self.winner_init == "scratch" and self.winner_epochs == 0),
             "--winner-epochs 0 keeps the inherited weights; use it with --winner-init inherit"),
            (self.calibration_size is None or self.calibration_size >= 4,
             f"--calibration-size must be at least 4, got {self.calibration_size}"),
            (self.eval_images is None or self.eval_images >= 1, f"--eval-images must be at least 1, got {self.eval_images}"),
            (self.train_device in ("cpu", "cuda"), f"--train-device must be cpu or cuda, got {self.train_device!r}"),
            (self.train_device == "cpu" or torch.cuda.is_available(),
             "--train-device cuda: PyTorch sees no CUDA GPU here; train on the CPU or install a CUDA build of torch"),
        )
        for ok, message in checks:
            if not ok:
                raise SearchError(message)
        check_fraction(self.val_fraction)

    def recipe(self, epochs: int, lr: float | None = None) -> TrainRecipe:
        return TrainRecipe(epochs=epochs, batch_size=self.batch_size, lr=lr or self.lr, seed=self.seed,
                           threads=self.threads, hflip=self.hflip)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSettings":
        """The settings of a search folder's ``settings.json`` (its ``"settings"`` entry)."""
        return cls(**{**d, "target": LatencyTarget(**d["target"])})


# ---- the output folder ----------------------------------------------------------------------------
def prepare_output_path(out: Path) -> None:
    """Refuse an output that can never hold the search (a file, a missing or read-only parent) before any work."""
    if out.exists() and not out.is_dir():
        raise SearchError(f"--out {out} is a file; name a folder for the search (it is created)")
    if out.is_dir() and not (out / SETTINGS).is_file() and any(out.iterdir()):
        raise SearchError(f"--out {out} is not empty and holds no search; choose an empty or new folder")
    check_output_folder(out / SETTINGS if out.is_dir() else out)


def prepare_folder(out: Path, record: dict[str, Any]) -> bool:
    """Create ``out`` (or check that it holds this very search); True when resuming. Checked before any work."""
    prepare_output_path(out)
    if out.is_dir():
        saved = out / SETTINGS
        if saved.is_file():
            old = json.loads(saved.read_text())
            if old != record:
                keys = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
                raise SearchError(
                    f"{out} holds a search with other settings ({', '.join(keys)} differ); re-run it with the same "
                    f"options and data to resume, or choose another --out")
            return True
    else:
        out.mkdir()
    check_output_folder(out / SETTINGS)
    write_json(out / SETTINGS, record)
    return False


def settings_record(settings: SearchSettings, data: LabeledImages) -> dict[str, Any]:
    """What must not change between a search and its resumption: the settings and the data."""
    source = {k: v for k, v in data.source.items() if k != "skipped"}
    return {"format": FORMAT, "settings": json.loads(json.dumps(settings.to_dict())),
            "data": json.loads(json.dumps(source, default=str)), "images": len(data), "classes": list(data.class_names)}


# ---- the run --------------------------------------------------------------------------------------
@dataclass
class _Context:
    settings: SearchSettings
    space: SearchSpace
    out: Path
    say: Log
    hook: Checkpointed


def _latency_stage(ctx: _Context) -> tuple[dict[str, Any], LatencyModel]:
    path = ctx.out / LATENCY
    if path.is_file():
        record = json.loads(path.read_text())
    else:
        t0 = time.perf_counter()
        record = calibrate(ctx.space, ctx.settings.target, np.random.default_rng([ctx.settings.seed, 3]),
                           ctx.settings.calibration_size, log=ctx.say)
        record["seconds"] = round(time.perf_counter() - t0, 1)
        record["load_average"] = list(os.getloadavg())
        write_json(path, record)
        ctx.hook("latency", 1)
    model = LatencyModel.from_dict(record["model"])
    ctx.say(f"latency model: {len(record['latency_ms'])} candidates measured, stated error (LOO p90) "
            f"{model.stated_error:.1%}")
    return record, model


def _measured_front(ctx: _Context, configs: list[Any]) -> list[float]:
    path = ctx.out / FRONT
    if path.is_file():
        return json.loads(path.read_text())["latency_ms"]
    ctx.say(f"re-measuring the {len(configs) - 1} front candidates and the base on {ctx.settings.target.describe()}")
    measured = LatencyMeter(ctx.settings.target, log=ctx.say).measure(configs)
    write_json(path, {"configs": [c.to_dict() for c in configs], "latency_ms": measured,
                      "load_average": list(os.getloadavg())})
    ctx.hook("front", 1)
    return measured


def run_search(
    settings: SearchSettings,
    data: LabeledImages,
    out: str | os.PathLike,
    *,
    command: str = "",
    log: Log | None = None,
    progress: bool = True,
    on_checkpoint: Checkpointed | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """Search the compact set around ``settings.base`` on ``data`` under the latency budget; see the module
    docstring for the stages. Returns the ``search.json`` record. ``on_checkpoint(stage, step)`` is called
    after each saved step (tests interrupt the run there)."""
    out = Path(out)
    say = log or (lambda _m: None)
    if plot:
        require_plot()
    base_cfg = get_config(settings.base, num_classes=data.num_classes)
    space = SearchSpace(base_cfg)
    saved_settings = settings_record(settings, data)
    resumed = prepare_folder(out, saved_settings)
    ctx = _Context(settings, space, out, say, on_checkpoint or (lambda _s, _i: None))
    target = settings.target
    say(f"{'resuming' if resumed else 'starting'} the search around {settings.base}: {space.size()} candidates "
        f"({space.describe()}), budget {settings.latency_budget_ms:g} ms on {target.describe()}")
    started = time.perf_counter()
    preprocess = Preprocess.from_config(base_cfg)
    train_idx, held_idx = split_indices(data.labels, settings.val_fraction, settings.seed)
    train_data, heldout = data.subset(train_idx), data.subset(held_idx)
    ranking = heldout if settings.eval_images is None else heldout.subset(np.arange(min(settings.eval_images, len(heldout))))

    # 1. latency on the target
    latency_record, latency_model = _latency_stage(ctx)
    predicted: dict[str, float] = {}

    def predict(c: Candidate) -> float:
        if c.key not in predicted:
            predicted[c.key] = latency_model.predict(space.to_config(c), target)
        return predicted[c.key]

    lowest = min_predicted(space, latency_model, target, np.random.default_rng([settings.seed, 4]))
    if lowest > settings.latency_budget_ms:
        raise BudgetError(
            f"no candidate around {settings.base} fits {settings.latency_budget_ms:g} ms on {target.describe()}: "
            f"the fastest is predicted at {lowest:.3g} ms (stated error {latency_model.stated_error:.0%}); raise "
            f"--latency-budget-ms to at least {lowest * 1.1:.3g}. The calibration stays in {out / LATENCY}.")

    # 2. the supernet
    torch.manual_seed(settings.seed)
    supernet = Supernet(space)
    init = _warm_start(supernet, space, settings.supernet_init, say) if settings.supernet_init else None
    supernet = supernet.to(settings.train_device)
    supernet_record = train_supernet(supernet, space, train_data, heldout, preprocess,
                                     settings.recipe(settings.supernet_epochs, settings.supernet_lr), out / SUPERNET,
                                     log=say, on_checkpoint=ctx.hook)
    supernet_record["init"] = init

    # 3. the search
    accuracies: dict[str, float] = {}

    def accuracy(c: Candidate) -> float:
        if c.key not in accuracies:
            with torch_threads(settings.threads):
                accuracies[c.key] = evaluate(SubnetView(supernet, c), ranking, preprocess)
        return accuracies[c.key]

    t0 = time.perf_counter()
    evolution = Evolution(space, accuracy, predict, settings.latency_budget_ms, settings.population,
                          settings.generations, settings.seed)
    state = evolution.run(out / EVOLUTION, log=say, on_checkpoint=ctx.hook)
    search_seconds = time.perf_counter() - t0
    evaluated = [Evaluated.from_dict(d) for d in state["archive"]]
    front = state["pareto"]

    # 4. the front (and the base variant) re-measured
    base_candidate = _base_candidate(space, base_cfg)
    configs = [space.to_config(evaluated[i].candidate) for i in front] + [base_cfg]
    measured_front = _measured_front(ctx, configs)
    measured = {evaluated[i].candidate.key: ms for i, ms in zip(front, measured_front)}
    for c, ms in zip(latency_record["candidates"], latency_record["latency_ms"]):
        measured.setdefault(Candidate.from_dict(c).key, ms)
    within = [i for i in front if measured[evaluated[i].candidate.key] <= settings.latency_budget_ms]
    if within:
        best = max(within, key=lambda i: (evaluated[i].accuracy, -measured[evaluated[i].candidate.key]))
    else:
        best = min(front, key=lambda i: measured[evaluated[i].candidate.key])
        say(f"[warning] every front candidate measured above the budget (noise or a tight budget); taking the "
            f"fastest, {measured[evaluated[best].candidate.key]:.3g} ms")

    # 5. the winner as a normal checkpoint
    winner = _winner_stage(ctx, supernet, evaluated[best].candidate, train_data, heldout, data, preprocess,
                           command, progress)

    # 6. results
    reference = {"candidate": base_candidate.to_dict() if base_candidate else None,
                 "config": base_cfg.to_dict(), "latency_ms": measured_front[-1],
                 "predicted_latency_ms": latency_model.predict(base_cfg, target),
                 "accuracy": accuracy(base_candidate) if base_candidate else None}
    candidates = []
    for i, e in enumerate(evaluated):
        cfg = space.to_config(e.candidate)
        ms = measured.get(e.candidate.key)
        candidates.append({
            "index": i, "config": cfg.to_dict(), "candidate": e.candidate.to_dict(),
            "macs": count_macs(cfg, target.shared_attention), "params": model_stats(cfg).params,
            "latency_ms": ms if ms is not None else e.predicted_ms,
            "latency_source": "measured" if ms is not None else "predicted",
            "predicted_latency_ms": e.predicted_ms, "accuracy": e.accuracy,
            **({"standalone_accuracy": winner["standalone_accuracy"]} if i == best else {}),
        })
    record = {
        "format": FORMAT, "base": settings.base, "backend": target.backend, "device": target.device,
        "batch": target.batch, "target": target.to_dict(), "latency_budget_ms": settings.latency_budget_ms,
        "versions": package_versions("torch", "onnx", "onnxruntime", "onnxscript", "numpy"),
        "settings": settings.to_dict(), "command": command,
        "data": saved_settings["data"], "classes": list(data.class_names), "split": {
            "val_fraction": settings.val_fraction, "seed": settings.seed, "train_images": len(train_data),
            "heldout_images": len(heldout), "ranking_images": len(ranking)},
        "space": {"size": space.size(), "description": space.describe()},
        "latency_model": {**latency_model.to_dict(), "calibration_candidates": len(latency_record["latency_ms"]),
                          "calibration_seconds": latency_record.get("seconds"),
                          "calibration_load_average": latency_record.get("load_average")},
        "supernet": supernet_record,
        "search": {"method": evolution.method, "evaluated": len(evaluated), "seconds": round(search_seconds, 1)},
        "candidates": candidates, "pareto": front, "best": best, "winner": winner, "reference": reference,
        "load_average": list(os.getloadavg()), "seconds_this_run": round(time.perf_counter() - started, 1),
    }
    write_json(out / RESULTS, record)
    if plot:
        plot_pareto(record, out / PLOT)
    say(f"chosen: candidate {best}, supernet top-1 {evaluated[best].accuracy:.1%}, stand-alone "
        f"{winner['standalone_accuracy']:.1%}, {measured[evaluated[best].candidate.key]:.3g} ms measured "
        f"(base {settings.base}: {reference['latency_ms']:.3g} ms)")
    return record


def require_plot() -> None:
    from ..errors import require

    require("matplotlib", "'psvit-deploy[plot]'", "the Pareto plot (or pass --no-plot)")


def _warm_start(supernet: Supernet, space: SearchSpace, source: str, say: Log) -> dict[str, Any]:
    """Copy a trained checkpoint of a candidate (usually the base variant) into the supernet."""
    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(source)
    try:
        cand = space.from_config(ckpt.config)
    except SearchError as exc:
        raise SearchError(f"--supernet-init {source}: its architecture is not a candidate of the space around "
                          f"the base ({exc}); pass a checkpoint of the base variant trained on this data") from None
    supernet.absorb(ckpt.model, cand)
    say(f"supernet warm-started from {ckpt.path} ({cand.key})")
    return {"checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "candidate": cand.to_dict()}


def _base_candidate(space: SearchSpace, cfg: Any) -> Candidate | None:
    try:
        return space.from_config(cfg)
    except SearchError:
        return None


def _winner_stage(ctx: _Context, supernet: Supernet, cand: Candidate, train_data: LabeledImages,
                  heldout: LabeledImages, data: LabeledImages, preprocess: Preprocess, command: str,
                  progress: bool) -> dict[str, Any]:
    """Train the chosen candidate stand-alone (from the inherited weights or from scratch) and save it."""
    s = ctx.settings
    record_path, best_path = ctx.out / WINNER, ctx.out / BEST
    if record_path.is_file() and best_path.is_file():
        return json.loads(record_path.read_text())
    epochs = s.supernet_epochs if s.winner_epochs is None else s.winner_epochs
    cfg = ctx.space.to_config(cand)
    if s.winner_init == "inherit":
        model = supernet.extract(cand)
    else:
        torch.manual_seed(s.seed)
        model = create_model(cfg)
    model = model.to(s.train_device)
    ctx.say(f"training the chosen candidate stand-alone: {epochs} epochs from {s.winner_init} weights")
    recipe = s.recipe(max(epochs, 1))
    if epochs > 0:
        result = train(model, train_data, heldout, preprocess, recipe, progress=progress)
        top1 = result.final_top1
        metadata = training_metadata(recipe, result, data.source, s.val_fraction, command)
    else:
        with torch_threads(s.threads):
            top1 = evaluate(model, heldout, preprocess)
        metadata = {"data": {k: v for k, v in data.source.items() if k != "skipped"}}
    metadata["search"] = {"candidate": cand.to_dict(), "base": s.base, "init": s.winner_init, "epochs": epochs,
                          "latency_budget_ms": s.latency_budget_ms, "target": s.target.to_dict(),
                          "search_folder": str(ctx.out), "command": command}
    save_checkpoint(model, best_path, class_names=list(data.class_names), metadata=metadata)
    record = {"init": s.winner_init, "epochs": epochs, "standalone_accuracy": top1, "checkpoint": BEST,
              "sha256": sha256_file(best_path)}
    write_json(record_path, record)
    ctx.hook("winner", 1)
    return record
