"""One ``glocal train`` run in the ``classification`` regime (:mod:`glocal.train.classification`), from the
method spec to the exported weights: the network is the method's extractor's (built from its options:
``backbone``, ``backbone_weights``, ``checkpoint`` / ``--init``), the weights and model card are written by
:mod:`glocal.train.export` exactly as for the tuples regime, so ``--set checkpoint=RUN/model.pt`` (with the
same architecture options, e.g. ``backbone``) loads them. The heads that exist only for training (margin
classifier, attention classifier) are not exported.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glocal.models.configs import resolved_preprocessing
from glocal.progress import Progress, no_progress
from glocal.train.classification import ClassifyConfig, train_classification
from glocal.train.data import read_training_set, split_classes
from glocal.train.export import export_model


def run_classification(spec: Any, run_settings: Any, run: str | Path, model_card: Callable[..., dict[str, Any]],
                       resume: bool = False, steps: int | None = None, progress: Progress = no_progress,
                       on_log: Callable[[dict[str, float]], None] | None = None,
                       on_data: Callable[[Any], None] | None = None,
                       say: Callable[[str], None] | None = None) -> tuple[Path, list[tuple[str, str]]]:
    """:func:`glocal.train.session.train_method` for a classification method (same arguments and result;
    ``run_settings`` a :class:`glocal.train.session.RunSettings`); ``model_card``: the session's
    :func:`~glocal.train.session.model_card` (passed in: this module does not import the session)."""
    run = Path(run)
    train_dict = dict(run_settings.train)
    if steps is not None:
        train_dict["steps"] = steps
    config = ClassifyConfig.from_settings(train_dict, "classification")
    options = spec.configure(dict(run_settings.settings), where="--set")
    extractor = spec.create_extractor(options.extractor)
    data = read_training_set(run_settings.data, run_settings.images)
    if on_data is not None:
        on_data(data)
    train, held_out = split_classes(data, run_settings.eval_fraction, config.seed)
    if not resume:
        run_settings.train = dataclasses.asdict(config)
        run_settings.save(run)
    result = train_classification(extractor.model, resolved_preprocessing(options.extractor), train, held_out, config,
                                  run, resume=resume, progress=progress, on_log=on_log, say=say)
    card = model_card(spec, options, run_settings, config, data, train, held_out, result)
    return export_model(result.network, run, card), result.problems
