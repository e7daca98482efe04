"""One ``glocal train`` run in the ``detector`` regime (Detect-to-Retrieve's landmark detector, ``d2r``): from a
box file and its images to ``RUN/model.pt``, the detector file that ``glocal index build --method d2r --regions
detector --detector RUN/model.pt`` loads (:func:`glocal.models.detector.save_detector`'s format, with the model
card inside).

``--data``: a box file (:mod:`glocal.train.detector_data`: pixel or Google Landmark Boxes CSV, or JSON); image
``ID`` is ``IMAGES/ID`` (with or without ``.jpg`` / ``.jpeg`` / ``.png``) or ``IMAGES/I/D/x/ID...`` (the GLD
tree), ``IMAGES`` being ``--images``, else the box file's folder. Only the images' headers are read up front;
each image is decoded when a batch or the evaluation hook needs it (EXIF orientation applied, longer side at
most ``--image-size``; ``--workers`` threads, at most ``--cache-images`` kept: :mod:`glocal.train.detector_images`);
boxes are in the pixels of the image as glocal loads it (EXIF-rotated). Missing or unreadable images are listed
and skipped, one found unreadable during the run is reported once and left out of its batch (and recorded in
checkpoints and the model card); a bad row is one line naming the file and line
(:class:`~glocal.errors.BadInputError`).

``--set KEY=VALUE``: settings of the detector (:class:`~glocal.models.detector.DetectorConfig`: ``backbone``,
``head_width``, ``head_depth``, ``score_threshold``, ``min_box_size``, ``max_boxes``, ``nms_iou``,
``input_size``, ``pretrained_backbone``, ``freeze_backbone_bn``), stored in the exported file. ``--init``: an
earlier detector file or run folder (its architecture and settings come from the file). Otherwise the trunk
starts from the ImageNet weights of the ``pretrained`` extra (random, with a note, without it). The detector's
``input_size`` (the side images are resized to when detecting) is kept inside the training sizes
``[image_size // 2, image_size]``.

A fraction ``--eval-fraction`` of the readable images (seeded) is held out for the evaluation hook (mean IoU
and AP@0.5, :func:`glocal.train.detector_loop.box_metrics`).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glocal.errors import BadOptionError, GlocalError
from glocal.models.detector import DetectorConfig, LandmarkDetector, save_detector
from glocal.progress import Progress, no_progress
from glocal.train.batches import with_skipped
from glocal.train.detector_data import AugmentConfig
from glocal.train.detector_images import BoxData, BoxImages, StreamedBoxDataset, read_box_data
from glocal.train.detector_loop import DetectorTrainConfig, fit_detector
from glocal.train.export import export_model
from glocal.train.runtime import ranks_from_environment

#: DetectorConfig fields ``--set`` may give (the rest: the checkpoint is ``--init``, the device ``--device``)
DETECTOR_SETTINGS = tuple(f.name for f in dataclasses.fields(DetectorConfig) if f.name not in ("checkpoint", "device"))


def split_images(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) positions: ``round(fraction * n)`` images drawn with ``seed`` are held out, at
    least one when ``fraction > 0`` and ``n >= 2``, never all."""
    if not 0.0 <= fraction < 1.0:
        raise BadOptionError(f"--eval-fraction must be in [0, 1), got {fraction}")
    k = min(n - 1, max(1 if fraction > 0 and n >= 2 else 0, round(fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[k:]), sorted(int(i) for i in order[:k])


def build_detector(settings: dict[str, Any], config: DetectorTrainConfig,
                   say: Callable[[str], None]) -> tuple[LandmarkDetector, str | None]:
    """The detector to train from ``--set`` settings (``checkpoint``: ``--init``, a file or a run folder) and
    the init file used."""
    settings = dict(settings)
    init = settings.pop("checkpoint", None)
    unknown = sorted(set(settings) - set(DETECTOR_SETTINGS))
    if unknown:
        raise BadOptionError(f"--set {', '.join(unknown)}: not a detector setting (known: {', '.join(DETECTOR_SETTINGS)})")
    if init is not None and Path(init).is_dir():
        init = str(Path(init) / "model.pt")
    low, high = config.image_size // 2, config.image_size
    with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=[]):
        warnings.simplefilter("always")
        torch.manual_seed(config.seed)  # the head's initialisation, seeded apart from the run's RNG
        try:
            if init is not None:
                detector = LandmarkDetector.from_checkpoint(init, **settings)
            else:
                detector = LandmarkDetector(DetectorConfig(**settings))
        except TypeError as exc:
            raise BadOptionError(f"--set: {exc}") from None
        except ValueError as exc:
            if isinstance(exc, GlocalError):
                raise
            raise BadOptionError(f"--set: {exc}") from None
    for w in caught:
        if "RANDOM weights" in str(w.message):  # the trunk: no pretrained extra
            say(str(w.message).removeprefix("detector.py: "))
    if "input_size" not in settings:
        size = min(max(detector.config.input_size, low), high)
        detector.config = dataclasses.replace(detector.config, input_size=size)
    return detector, init


def run_detector(spec: Any, run_settings: Any, run: str | Path, resume: bool = False, steps: int | None = None,
                 progress: Progress = no_progress, on_log: Callable[[dict[str, float]], None] | None = None,
                 on_data: Callable[[Any], None] | None = None, say: Callable[[str], None] | None = None,
                 on_result: Callable[[Any], None] | None = None) -> tuple[Path | None, list[tuple[str, str]]]:
    """:func:`glocal.train.session.train_method` for the detector regime (same arguments and result;
    ``run_settings`` a :class:`glocal.train.session.RunSettings`)."""
    run = Path(run)
    say = say or (lambda line: None)
    train_dict = dict(run_settings.train)
    if steps is not None:
        train_dict["steps"] = steps
    config = DetectorTrainConfig.from_settings(train_dict, "detector")
    main = ranks_from_environment().main
    detector, init = build_detector(run_settings.settings, config, say)
    data: BoxData = read_box_data(run_settings.data, run_settings.images, config.workers)
    if on_data is not None and main:
        on_data(data)
    train, held = split_images(len(data.ids), run_settings.eval_fraction, config.seed)
    if not resume and main:
        run_settings.train = dataclasses.asdict(config)
        run_settings.save(run)
    skipped: dict[str, str] = {}  # files found unreadable during the run, shared by both loaders
    loaders = [BoxImages(data, rows, config.image_size, config.cache_images, config.workers,
                         say=say if main else None, skipped=skipped) for rows in (train, held)]
    dataset = StreamedBoxDataset(loaders[0], AugmentConfig(config.image_size // 2, config.image_size, config.flip_prob),
                                 config.seed)
    try:
        result = fit_detector(detector, dataset, config, run, loaders[1], resume=resume,
                              progress=progress if main else no_progress, on_log=on_log, say=say)
    finally:
        for loader in loaders:
            loader.close()
    result.problems = with_skipped(data.problems, skipped)
    if on_result is not None:
        on_result(result)
    if not main:
        return None, result.problems
    detector_config = dataclasses.asdict(dataclasses.replace(detector.config, checkpoint=None))
    detector_config.pop("device")
    history = result.history
    card = {"method": spec.name, "regime": spec.training, "init": init, "options": {"detector": detector_config},
            "settings": {str(k): v for k, v in run_settings.settings.items()}, "data": data.summary(),
            "train_split": {"images": len(train)}, "held_out": {"images": len(held)},
            "skipped_files": [list(p) for p in result.problems], "steps": result.step,
            "train": dataclasses.asdict(config), "metrics": ["mean IoU", "AP@0.5"],
            "evaluations": result.evaluations(), "final_loss": history[-1]["loss"] if history else None,
            "load_with": f"glocal index build PHOTOS --method {spec.name} --regions detector --detector FILE",
            "command": run_settings.command}
    return export_model(detector, run, card, save=lambda path, c: save_detector(detector, path, card=c)), result.problems
