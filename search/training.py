"""One-shot training of the supernet: single-path uniform sampling, resumable at epoch boundaries.

Every step draws one candidate (uniformly per choice, :meth:`SearchSpace.sample`) and trains that path with
the recipe of :func:`psvit.train.train` (AdamW without decay on biases/norms/embeddings, warmup + cosine,
label smoothing, gradient clipping, crop/flip augmentation). After each epoch the weights, the optimizer,
the step and both random streams are saved, so an interrupted run continues exactly where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import LabeledImages
from ..preprocessing import Preprocess
from ..provenance import atomic_output
from ..train import (
    TrainRecipe, augment, batch_indices, evaluate, lr_at, make_optimizer, model_device, optimizer_step, to_tensor,
    torch_threads,
)
from .space import SearchSpace
from .supernet import Supernet, SubnetView

Log = Callable[[str], None]
Checkpointed = Callable[[str, int], None]


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_output(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved training state (None if there is none); tensors and plain values only (weights_only)."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def train_supernet(
    supernet: Supernet,
    space: SearchSpace,
    train_data: LabeledImages,
    heldout: LabeledImages,
    preprocess: Preprocess,
    recipe: TrainRecipe,
    state_path: Path,
    *,
    log: Log | None = None,
    on_checkpoint: Checkpointed | None = None,
    monitor_images: int = 512,
) -> dict[str, Any]:
    """Train ``supernet`` in place (continuing from ``state_path`` if it holds a run) and return the history.

    After each epoch the largest and a fixed small path are evaluated on up to ``monitor_images`` held-out
    images (progress only; the search ranks candidates on the whole held-out split).
    """
    say = log or (lambda _m: None)
    optimizer = make_optimizer(supernet, recipe)
    steps_per_epoch = math.ceil(len(train_data) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = min(total - 1, int(round(recipe.warmup_epochs * steps_per_epoch)))
    generator = torch.Generator().manual_seed(recipe.seed)
    paths = np.random.default_rng([recipe.seed, 1])
    labels = torch.from_numpy(train_data.labels)
    device = model_device(supernet)  # training follows the supernet's device (CPU, or a GPU for large bases)
    history: list[dict[str, Any]] = []
    epoch0, step, seconds = 0, 0, 0.0
    saved = load_state(state_path)
    if saved is not None:
        supernet.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])  # its state follows the parameters' device
        generator.set_state(saved["generator"])
        paths.bit_generator.state = json.loads(saved["paths"])
        epoch0, step, seconds = int(saved["epoch"]), int(saved["step"]), float(saved["seconds"])
        history = json.loads(saved["history"])
        if epoch0 < recipe.epochs:
            say(f"supernet: resuming after epoch {epoch0}/{recipe.epochs}")
    monitor = heldout.subset(np.arange(min(monitor_images, len(heldout))))
    small = space.smallest()
    with torch_threads(recipe.threads):
        for epoch in range(epoch0 + 1, recipe.epochs + 1):
            supernet.train()
            t0 = time.perf_counter()
            loss_sum, seen = 0.0, 0
            for idx in batch_indices(len(train_data), recipe.batch_size, generator):
                lr = lr_at(step, total, warmup, recipe.lr, recipe.min_lr)
                x = augment(to_tensor(train_data.pixels[idx.numpy()], preprocess), recipe.pad, recipe.hflip, generator)
                path = space.sample(paths)  # one candidate per step: single-path uniform sampling
                loss = F.cross_entropy(supernet(x.to(device), path), labels[idx].to(device),
                                       label_smoothing=recipe.label_smoothing)
                optimizer_step(optimizer, supernet, loss, lr, recipe.grad_clip)
                step += 1
                loss_sum += loss.item() * len(idx)
                seen += len(idx)
            largest = evaluate(SubnetView(supernet, space.largest()), monitor, preprocess)
            smallest = evaluate(SubnetView(supernet, small), monitor, preprocess)
            seconds += time.perf_counter() - t0
            history.append({"epoch": epoch, "lr": lr, "loss": round(loss_sum / max(seen, 1), 4),
                            "largest_top1": round(largest, 4), "smallest_top1": round(smallest, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
            say(f"supernet epoch {epoch}/{recipe.epochs}  loss {loss_sum / max(seen, 1):.3f}  held-out: largest "
                f"{largest:.1%}, smallest {smallest:.1%}  ({time.perf_counter() - t0:.0f}s)")
            _save_state(state_path, {
                "model": supernet.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "paths": json.dumps(paths.bit_generator.state), "epoch": epoch, "step": step, "seconds": seconds,
                "history": json.dumps(history),
            })
            if on_checkpoint is not None:
                on_checkpoint("supernet", epoch)
    supernet.eval()
    return {"epochs": recipe.epochs, "seconds": round(seconds, 1), "history": history, "recipe": recipe.to_dict()}
