"""CPU-friendly training of a PSViT on a small in-memory dataset.

AdamW with linear warmup and cosine decay (per step), label smoothing, gradient clipping and light
augmentation (random crop with zero padding in normalised space, optional horizontal flip). Runs are
deterministic for a seed and a thread count: the model is initialised after ``torch.manual_seed(seed)``
and shuffling/augmentation draw from their own seeded generator.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from .data import LabeledImages
from .errors import ConfigError, DataError
from .fields import check_fields
from .preprocessing import Preprocess

NO_DECAY = ("cls_token", "pos_embed")


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that determines a training run besides the data and the architecture."""

    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0
    pad: int = 4
    hflip: bool = True
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        check_fields(self, "training recipe")
        checks = (
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr], got {self.min_lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warmup epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive, got {self.grad_clip}"),
            (self.pad >= 0, f"crop padding must be >= 0, got {self.pad}"),
            (self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    heldout_top1: float | None  # None: no held-out images
    seconds: float


@dataclass
class TrainResult:
    """Held-out top-1 of the final weights (what is saved) and of the best epoch, and the history.

    Without held-out images (``val_fraction`` 0) the three held-out fields are None: nothing was measured.
    """

    final_top1: float | None
    best_top1: float | None
    best_epoch: int | None
    seconds: float
    params: int
    train_images: int
    heldout_images: int
    history: list[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_optimizer(model: torch.nn.Module, recipe: TrainRecipe) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and the token/position embeddings (as timm)."""
    exempt = {n for n, p in model.named_parameters() if p.ndim < 2 or n in NO_DECAY}
    decay = [p for n, p in model.named_parameters() if n not in exempt]
    no_decay = [p for n, p in model.named_parameters() if n in exempt]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
    )


def optimizer_step(optimizer: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, lr: float,
                   grad_clip: float | None) -> None:
    """One update: backpropagate ``loss``, clip the gradient norm (if ``grad_clip``), step at ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warmup from lr/warmup to lr, then cosine decay to ``min_lr`` at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps - 1)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


def build_model(variant: str, num_classes: int, seed: int, **overrides: Any) -> torch.nn.Module:
    """``create_model`` after ``torch.manual_seed(seed)``, so the initial weights follow the seed."""
    from .registry import create_model

    torch.manual_seed(seed)
    return create_model(variant, num_classes=num_classes, **overrides)


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` items: shuffled by ``generator``, in order without one."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters live: batches are moved there (training and evaluation follow the model)."""
    return next(model.parameters()).device


def to_tensor(pixels: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """uint8 (B, C, H, W) pixels -> the normalised float32 batch the model takes."""
    return torch.from_numpy(preprocess.normalize(pixels))  # (B, C, H, W) float32


def augment(x: torch.Tensor, pad: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop of a zero-padded (= mean colour) batch, then an optional random horizontal flip."""
    b, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).tolist()
        x = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: LabeledImages, preprocess: Preprocess, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (eval mode; the model's mode is restored), on the model's device."""
    if len(data) == 0:
        raise DataError("no images to evaluate on: an accuracy of nothing would be a made-up number")
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct = 0
    for idx in batch_indices(len(data), batch_size, None):
        i = idx.numpy()
        logits = model(to_tensor(data.pixels[i], preprocess).to(device))  # (B, num_classes)
        correct += int((logits.argmax(-1).cpu().numpy() == data.labels[i]).sum())
    model.train(was_training)
    return correct / len(data)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: unchanged), restoring the count afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  train {task.fields[acc]:.1%}  held-out {task.fields[val]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def train(
    model: torch.nn.Module,
    train_data: LabeledImages,
    heldout: LabeledImages,
    preprocess: Preprocess,
    recipe: TrainRecipe,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place and measure held-out top-1 after every epoch."""
    if train_data.num_classes != model.cfg.num_classes:
        raise ConfigError(
            f"the data has {train_data.num_classes} classes but the model {model.cfg.num_classes}; build it "
            f"with num_classes={train_data.num_classes}"
        )
    if len(train_data) == 0:
        raise ConfigError("no training images (all were held out); lower --val-fraction")
    optimizer = make_optimizer(model, recipe)
    steps_per_epoch = math.ceil(len(train_data) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = min(total - 1, int(round(recipe.warmup_epochs * steps_per_epoch)))
    generator = torch.Generator().manual_seed(recipe.seed)
    labels = torch.from_numpy(train_data.labels)
    device = model_device(model)
    history: list[EpochRecord] = []
    start = time.perf_counter()
    step = 0
    with torch_threads(recipe.threads), _progress(progress) as bar:
        task = bar.add_task("train", total=total, epoch=f"1/{recipe.epochs}", loss=0.0, acc=0.0, val="-")
        for epoch in range(1, recipe.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            for idx in batch_indices(len(train_data), recipe.batch_size, generator):
                lr = lr_at(step, total, warmup, recipe.lr, recipe.min_lr)
                x = to_tensor(train_data.pixels[idx.numpy()], preprocess)  # (B, C, H, W)
                x = augment(x, recipe.pad, recipe.hflip, generator).to(device)
                y = labels[idx].to(device)
                logits = model(x)  # (B, num_classes)
                loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                optimizer_step(optimizer, model, loss, lr, recipe.grad_clip)
                step += 1
                loss_sum += loss.item() * len(idx)
                correct += int((logits.argmax(-1) == y).sum())
                seen += len(idx)
                bar.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen)
            val = evaluate(model, heldout, preprocess) if len(heldout) else None
            shown = "-" if val is None else f"{val:.1%}"
            record = EpochRecord(epoch, lr, loss_sum / seen, correct / seen, val, time.perf_counter() - t0)
            history.append(record)
            bar.update(task, epoch=f"{min(epoch + 1, recipe.epochs)}/{recipe.epochs}", val=shown)
            if progress:
                bar.console.print(
                    f"epoch {epoch}/{recipe.epochs}  lr {lr:.2e}  loss {record.train_loss:.3f}  "
                    f"train {record.train_top1:.1%}  held-out {shown}  ({record.seconds:.0f}s)",
                    highlight=False,
                )
    best = max(history, key=lambda r: r.heldout_top1) if len(heldout) else None
    return TrainResult(
        final_top1=history[-1].heldout_top1, best_top1=None if best is None else best.heldout_top1,
        best_epoch=None if best is None else best.epoch,
        seconds=time.perf_counter() - start, params=sum(p.numel() for p in model.parameters()),
        train_images=len(train_data), heldout_images=len(heldout), history=history,
    )


def training_metadata(
    recipe: TrainRecipe,
    result: TrainResult,
    data_source: dict[str, Any],
    val_fraction: float,
    command: str,
) -> dict[str, Any]:
    """What a trained checkpoint records about how it was made (stored under ``psvit.extra``)."""
    source = {k: v for k, v in data_source.items() if k != "skipped"}
    source["skipped_files"] = len(data_source.get("skipped", []))
    return {
        "training": {
            "recipe": recipe.to_dict(),
            "optimizer": "AdamW (no decay on biases, norms, cls_token, pos_embed), warmup + cosine",
            "loss": f"cross-entropy, label smoothing {recipe.label_smoothing}",
            "augmentation": f"random crop (pad {recipe.pad}), horizontal flip: {recipe.hflip}",
            "val_fraction": val_fraction,
            "split": "psvit.data.split_indices(labels, val_fraction, seed): stratified per class",
            "heldout_top1": _rounded(result.final_top1, 6),  # None: no held-out images (val_fraction 0)
            "best_heldout_top1": _rounded(result.best_top1, 6),
            "best_epoch": result.best_epoch,
            "train_images": result.train_images,
            "heldout_images": result.heldout_images,
            "seconds": round(result.seconds, 1),
            "history": [
                {"epoch": r.epoch, "loss": round(r.train_loss, 4), "heldout_top1": _rounded(r.heldout_top1, 4)}
                for r in result.history
            ],
            "command": command,
        },
        "data": source,
    }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
