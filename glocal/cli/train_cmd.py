"""``glocal train METHOD --data DATA --out RUN``: fine-tune a method's network in the regime its spec names
(:mod:`glocal.train.session`); the last line printed is the exported weights file.

Exit status 2 with one line ``training regime X is not implemented yet`` for a method whose regime is not
implemented (so far ``tuples``: GeM, HOW; ``tuples-superfeatures``: FIRe; ``classification``: DELG, DOLG, ViTGaL;
``detector``: ``d2r``'s landmark boxes); 1 when images were
skipped (missing or unreadable, each named on stderr; the model is still trained and exported); 3 for a bad
label or box file (one line naming file and line).
"""
from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from glocal.cli.common import EXIT_PARTIAL, checkpoint_file, err, out, show_progress


def train_command(
    method: Annotated[str, typer.Argument(help="The method whose network is trained (see 'glocal methods').")],
    data: Annotated[Path | None, typer.Option(
        "--data", help="Training data: a folder per class, a labels .csv (file,label) or a revisited gnd .pkl; "
                     "for the detector a box .csv / .json.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (checkpoints, log, model.pt).")] = None,
    images: Annotated[Path | None, typer.Option(
        "--images", help="Folder the labels .csv / gnd / box file's image names are relative to (default: next to "
                       "the file).")] = None,
    init: Annotated[str | None, typer.Option(
        "--init", help="Weights to start from (file, run folder for the detector, or published name; default: the "
                     "method's own).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps in all (default 100).")] = None,
    batch: Annotated[int | None, typer.Option(
        "--batch", help="Tuples (tuples regime, default 5) or images (classification 16, detector 4) per "
                      "micro-batch.")] = None,
    lr: Annotated[float | None, typer.Option(
        "--lr", help="Learning rate (tuples: Adam, 1e-6, FIRe 3e-5; classification: Adam, 1e-4; detector: AdamW, 1e-3).")] = None,
    accumulate: Annotated[int | None, typer.Option("--accumulate", help="Micro-batches per optimizer step.")] = None,
    negatives: Annotated[int | None, typer.Option("--negatives", help="Hard negatives per tuple (tuples: 5).")] = None,
    margin: Annotated[float | None, typer.Option(
        "--margin", help="Contrastive margin tau (tuples: 0.7, HOW 0.8; FIRe's Super-feature margin 1.1), or the "
                         "ArcFace / CosFace margin (classification: the model's).")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Longest image side in training (512; HOW, FIRe 1024); "
                                                   "classification trains on squares of this side; the detector "
                                                   "on sides drawn from [N/2, N] (640).")] = None,
    frozen_fraction: Annotated[float | None, typer.Option(
        "--frozen-fraction", help="Tuples: fraction of the parameter tensors, earliest first, kept frozen.")] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="Classification: arcface (default) or cosface.")] = None,
    scale: Annotated[float | None, typer.Option("--scale", help="Classification: margin logit scale (the model's).")] = None,
    learn_scale: Annotated[bool | None, typer.Option(
        "--learn-scale/--fixed-scale", help="Classification: train the logit scale (default fixed).")] = None,
    freeze_backbone: Annotated[bool | None, typer.Option(
        "--freeze-backbone", help="Classification: only the heads train.")] = None,
    optimizer: Annotated[str | None, typer.Option(
        "--optimizer", help="Classification: adam (default) or sgd (momentum 0.9); detector: adamw (default) or sgd.")] = None,
    global_weight: Annotated[float | None, typer.Option(
        "--global-weight", help="Classification: weight of the global margin loss (1; 0: DELG's or ViTGaL's local heads only).")] = None,
    eval_fraction: Annotated[float, typer.Option(
        "--eval-fraction", help="Fraction of the classes (detector: images) held out for the evaluation hook.")] = 0.2,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Checkpoint every N steps (0: none).")] = 0,
    eval_every: Annotated[int, typer.Option(
        "--eval-every", help="Held-out mAP (detector: mean IoU and AP@0.5) every N steps (0: none).")] = 0,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue the run in this folder from its newest checkpoint.")] = None,
    queries_per_epoch: Annotated[int, typer.Option(
        "--queries-per-epoch", help="Tuples mined per epoch (0: one per anchor / pair).")] = 0,
    pool_size: Annotated[int, typer.Option(
        "--pool-size", help="Images the negatives are mined from each epoch, drawn at random (0: all).")] = 0,
    amp: Annotated[str, typer.Option(
        "--amp", help="Mixed precision on CUDA: none, bf16 or fp16 (ignored on the CPU).")] = "none",
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", help="channels_last memory format on CUDA (ignored on the CPU).")] = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Threads decoding the training images ahead of each batch (2; 0: none).")] = None,
    cache_images: Annotated[int | None, typer.Option(
        "--cache-images", help="Decoded training images kept in memory (512; 0: none).")] = None,
    flip_prob: Annotated[float | None, typer.Option(
        "--flip-prob", help="Tuples and detector: mirror each training image left-right with this probability "
        "(FIRe 0.5, the detector 0.5; others 0).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:i.")] = "cpu",
    settings_kv: Annotated[list[str] | None, typer.Option(
        "--set", help="Option KEY=VALUE of the method (VALUE as JSON); repeatable.")] = None,
) -> None:
    """Fine-tune a method's network on your images; prints the exported weights file last.

    Several GPUs (or CPU processes): torchrun --nproc_per_node K -m glocal train ... (rank 0 writes)."""
    from glocal.errors import BadOptionError
    from glocal.methods import get
    from glocal.methods.options import parse_set
    from glocal.progress import as_progress
    from glocal.train.session import RunSettings, check_regime, train_method

    spec = get(method)
    check_regime(spec)
    if resume is not None:
        run = resume
        stored = RunSettings.load(run)
        if stored.method != spec.name:
            raise BadOptionError(f"--resume {run}: the run trains {stored.method!r}, not {spec.name!r}")
        run_settings = stored
    else:
        if data is None or out_dir is None:
            raise BadOptionError("--data and --out are needed (or --resume RUN)")
        run = out_dir
        settings = parse_set(settings_kv or [])
        if init is not None:
            settings["checkpoint"] = checkpoint_file(init, spec.name)
        given = {"batch": batch, "accumulate": accumulate, "lr": lr, "margin": margin, "negatives": negatives,
                 "image_size": image_size, "frozen_fraction": frozen_fraction, "loss": loss, "scale": scale,
                 "learn_scale": learn_scale, "freeze_backbone": freeze_backbone, "optimizer": optimizer,
                 "global_weight": global_weight,
                 # the tuples regime's mining options and both regimes' runtime options, given only when they
                 # differ from their defaults
                 "queries_per_epoch": queries_per_epoch or None, "pool_size": pool_size or None,
                 "amp": None if amp == "none" else amp, "channels_last": channels_last or None,
                 "workers": workers, "cache_images": cache_images, "flip_prob": flip_prob}
        # settings not given take the regime's defaults
        train = {"steps": steps if steps is not None else 100, **{k: v for k, v in given.items() if v is not None},
                 "checkpoint_every": checkpoint_every, "eval_every": eval_every, "seed": seed, "device": device}
        run_settings = RunSettings(method=spec.name, data=str(data), settings=settings, train=train,
                                   images=str(images) if images is not None else None, eval_fraction=eval_fraction,
                                   command=_command(spec.name, data, run, images, init, train, eval_fraction,
                                                    settings_kv or []))

    seen: list[tuple[str, str]] = []

    def on_data(ts: object) -> None:
        s = ts.summary()  # type: ignore[attr-defined]
        if "boxes" in s:  # a box file (detector regime)
            err.print(f"data: {s['images']} images, {s['boxes']} boxes", highlight=False)
        else:
            pairs = f", {s['pairs']} positive pairs" if "pairs" in s else ""
            err.print(f"data: {s['images']} images, {s['classes']} classes, {s['anchors']} anchors{pairs}, "
                      f"{s['distractors']} without a class", highlight=False)
        seen.extend(ts.problems)  # type: ignore[attr-defined]
        for path, reason in ts.problems:  # type: ignore[attr-defined]
            err.print(f"[yellow]skipped[/yellow] {escape(path)}: {escape(reason)}", highlight=False, soft_wrap=True)
        if ts.singletons:  # type: ignore[attr-defined]
            names = ", ".join(ts.singletons[:10])  # type: ignore[attr-defined]
            err.print(f"{len(ts.singletons)} classes with one image (no pair; negatives only): "  # type: ignore[attr-defined]
                      f"{escape(names)}", highlight=False)

    def on_log(row: dict[str, float]) -> None:
        parts = [f"step {int(row['step'])}", f"epoch {int(row['epoch'])}"]
        if not math.isnan(row["loss"]):
            parts += [f"loss {row['loss']:.4f}", f"lr {row['lr']:.2e}", f"{row['images_per_s']:.1f} images/s"]
        if not math.isnan(row.get("eval_map", math.nan)):
            parts.append(f"held-out mAP {100 * row['eval_map']:.2f}")
        if not math.isnan(row.get("eval_iou", math.nan)):
            parts.append(f"held-out IoU {100 * row['eval_iou']:.2f}  AP@0.5 {100 * row['eval_ap50']:.2f}")
        err.print("  ".join(parts), highlight=False, soft_wrap=True)

    said: set[str] = set()

    def say(line: str) -> None:
        said.add(line)
        err.print(escape(line), highlight=False, soft_wrap=True)

    path, problems = train_method(spec, run_settings, run, resume=resume is not None,
                                  steps=steps if resume is not None else None,
                                  progress=as_progress(show_progress()), on_log=on_log, on_data=on_data, say=say)
    if path is None:  # a rank other than 0 under torchrun: rank 0 reports and exports
        return
    err.print(f"model card: {escape(str(path.parent / 'MODEL_CARD.md'))}", highlight=False)
    reported = {p for p, _ in seen}
    for bad, reason in problems:  # those not reported yet (those found during training were, as they were met)
        if bad not in reported and f"skipped {bad}: {reason}" not in said:
            err.print(f"[yellow]skipped[/yellow] {escape(bad)}: {escape(reason)}", highlight=False, soft_wrap=True)
    if problems:
        err.print(f"{len(problems)} files skipped (missing or unreadable)", highlight=False)
    out.print(str(path), highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(EXIT_PARTIAL)


def _command(method: str, data: Path, run: Path, images: Path | None, init: str | None, train: dict,
             eval_fraction: float, settings: list[str]) -> str:
    """The command line that repeats this run, every training setting spelled out (for the model card)."""
    words = ["glocal", "train", method, "--data", str(data), "--out", str(run)]
    if images is not None:
        words += ["--images", str(images)]
    if init is not None:
        words += ["--init", init]
    for key, value in train.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):  # a flag: --freeze-backbone, --learn-scale / --fixed-scale
            words += [flag] if value else (["--fixed-scale"] if key == "learn_scale" else [])
        else:
            words += [flag, str(value)]
    words += ["--eval-fraction", str(eval_fraction)]
    for item in settings:
        words += ["--set", item]
    return shlex.join(words)
