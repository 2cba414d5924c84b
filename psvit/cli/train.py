"""``psvit-export train``: train a variant on an image folder or the synthetic set and save a checkpoint."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..checkpoint import save_checkpoint
from ..data import LabeledImages, check_fraction, split_indices
from ..errors import ConfigError
from ..preprocessing import Preprocess
from ..outputs import Output, OutputKind, check_outputs
from ..registry import get_config
from ..train import TrainRecipe, build_model, train as run_training, training_metadata
from . import app
from .console import console, say, warn

SYNTHETIC = "synthetic"
DEFAULT_SYNTHETIC_COUNT = 8000


def load_training_data(data: str, synthetic_count: int | None, seed: int, preprocess: Preprocess) -> LabeledImages:
    if data == SYNTHETIC:
        from ..data.synthetic import load_synthetic

        count = DEFAULT_SYNTHETIC_COUNT if synthetic_count is None else synthetic_count
        if count < 20:
            raise ConfigError(f"--synthetic-count must be at least 20 (2 per class), got {count}")
        say(f"generating {count} synthetic images (seed {seed})...")
        return load_synthetic(count, seed, preprocess)
    if synthetic_count is not None:
        raise ConfigError("--synthetic-count only applies to --data synthetic; drop it or use --data synthetic")
    from ..data.image_folder import load_image_folder

    dataset = load_image_folder(data, preprocess)
    skipped = dataset.source["skipped"]
    if skipped:
        warn(f"{len(skipped)} unreadable file(s), e.g. {skipped[0]}", "skipped")
    return dataset


def reproduce_command(
    variant: str, data: str, synthetic_count: int | None, recipe: TrainRecipe, val_fraction: float, out: Path
) -> str:
    """The full command line, every option spelled out, that repeats this run."""
    args = ["psvit-export", "train", "--variant", variant, "--data", data]
    if data == SYNTHETIC:
        args += ["--synthetic-count", str(DEFAULT_SYNTHETIC_COUNT if synthetic_count is None else synthetic_count)]
    args += [
        "--epochs", str(recipe.epochs), "--batch-size", str(recipe.batch_size), "--lr", f"{recipe.lr:g}",
        "--seed", str(recipe.seed), "--val-fraction", f"{val_fraction:g}",
        "--flip" if recipe.hflip else "--no-flip",
    ]
    if recipe.threads is not None:
        args += ["--threads", str(recipe.threads)]
    return shlex.join(args + ["--out", str(out)])


@app.command()
def train(
    variant: Annotated[str, typer.Option("--variant", help="Variant to train (`psvit-export info` lists them).")],
    data: Annotated[str, typer.Option(
        "--data",
        help="An image folder (one subfolder per class), or 'synthetic' (a folder of that name: ./synthetic).",
    )],
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training split.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (.safetensors).")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per training step.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate (warmup, then cosine).")] = 1e-3,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seeds the weights, the split, shuffling and the synthetic data.")] = 0,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="Share of each class held out (0: train on every image, no held-out accuracy).",
    )] = 0.2,
    synthetic_count: Annotated[Optional[int], typer.Option(
        "--synthetic-count", help=f"Images to generate for --data synthetic [default: {DEFAULT_SYNTHETIC_COUNT}].",
    )] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", help="torch CPU threads [default: torch's choice].")] = None,
    flip: Annotated[Optional[bool], typer.Option(
        "--flip/--no-flip",
        help="Random horizontal flips [default: on for synthetic data (its classes are flip-invariant), "
             "off for folders].",
    )] = None,
) -> None:
    """Train a PSViT on CPU and save a checkpoint with its recipe, data fingerprint and held-out accuracy."""
    check_outputs([Output(out, OutputKind.CHECKPOINT)], inputs=[data])  # before training, not after
    check_fraction(val_fraction)
    cfg = get_config(variant)
    preprocess = Preprocess.from_config(cfg)
    recipe = TrainRecipe(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, threads=threads,
        hflip=(data == SYNTHETIC) if flip is None else flip,
    )
    dataset = load_training_data(data, synthetic_count, seed, preprocess)
    train_idx, heldout_idx = split_indices(dataset.labels, val_fraction, seed)
    held = (f"{len(heldout_idx)} held out" if len(heldout_idx)
            else "none held out (--val-fraction 0): no held-out accuracy will be measured")
    say(f"{len(dataset)} images, {dataset.class_summary()}")
    say(f"{len(train_idx)} train, {held}")
    model = build_model(variant, dataset.num_classes, seed)
    result = run_training(model, dataset.subset(train_idx), dataset.subset(heldout_idx), preprocess, recipe)
    command = reproduce_command(variant, data, synthetic_count, recipe, val_fraction, out)
    metadata = training_metadata(recipe, result, dataset.source, val_fraction, command)
    save_checkpoint(model, out, class_names=list(dataset.class_names), metadata=metadata)

    table = Table(title=f"trained {variant}", show_header=False)
    not_measured = "not measured (--val-fraction 0: trained on every image)"
    for key, value in (
        ("held-out top-1 (final weights)",
         not_measured if result.final_top1 is None else f"{result.final_top1:.2%} of {result.heldout_images}"),
        ("best held-out top-1",
         not_measured if result.best_top1 is None else f"{result.best_top1:.2%} (epoch {result.best_epoch})"),
        ("train images / classes", f"{result.train_images} / {dataset.num_classes}"),
        ("epochs", str(recipe.epochs)),
        ("time", f"{result.seconds:.1f}s"),
        ("params", f"{result.params:,}"),
        ("checkpoint", str(out)),
        ("reproduce", command),
    ):
        table.add_row(key, value)
    console.print(table)
