"""One training run of a method, from its spec to the exported weights (what ``glocal train`` calls).

The regime comes from the spec's ``training`` field (:data:`glocal.methods.spec.TRAINING_REGIMES`), never from
the method's name. Implemented so far: ``tuples`` (:mod:`glocal.train.loop`, the contrastive loss on the
network's global descriptor: GeM, HOW) and ``tuples-superfeatures`` (the same loop with FIRe's losses,
:mod:`glocal.train.objectives`), for extractors that offer ``trainable_network()``, and ``classification``
(:mod:`glocal.train.classification`, run by :mod:`glocal.train.classification_run`), and ``detector``
(:mod:`glocal.train.detector_run`). Any other regime, or a
tuples method whose extractor offers no such network, is refused with :class:`RegimeNotImplementedError` (exit
status 2) before anything is read or written.

Training settings not given take the extractor's ``training_defaults`` (its paper's, e.g. HOW's margin 0.8),
else :class:`~glocal.train.loop.TrainConfig`'s. An extractor with ``prepare_training(images)`` gets the
training images first on a new run (HOW / FIRe fit their frozen whitening o(.) there when it is not fitted).

``RUN/run.json`` records what the run was started with (method, ``--set`` settings, data, training
settings, held-out fraction, command), so ``resume`` needs only the run folder. Under ``torchrun`` every rank
runs :func:`train_method`; only rank 0 reports the data, writes ``run.json`` and exports
(:mod:`glocal.train.runtime`); the other ranks return ``None`` for the exported file.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from glocal.errors import BadInputError, BadOptionError
from glocal.io.atomic import write_json_atomic
from glocal.models.configs import resolved_preprocessing
from glocal.progress import Progress, no_progress

#: training regimes this version implements
IMPLEMENTED_REGIMES = ("tuples", "tuples-superfeatures", "classification", "detector")


class RegimeNotImplementedError(BadOptionError):
    """The method's training regime is not implemented yet (exit status 2)."""


@dataclasses.dataclass
class RunSettings:
    """What a run is started with (stored as ``RUN/run.json``)."""

    method: str
    data: str
    settings: dict[str, Any]
    train: dict[str, Any]
    images: str | None = None
    eval_fraction: float = 0.2
    command: str = ""

    def save(self, run: Path) -> None:
        run.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run / "run.json", {"format": "glocal-train-run", "version": 1,
                                             **dataclasses.asdict(self)})

    @classmethod
    def load(cls, run: Path) -> RunSettings:
        path = run / "run.json"
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadInputError(f"{path}: no such file; {run} is not a glocal training run") from None
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{path}: unreadable ({exc})") from None
        if obj.get("format") != "glocal-train-run":
            raise BadInputError(f"{path}: not a glocal training run")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})


def check_regime(spec: Any) -> None:
    """:class:`RegimeNotImplementedError` unless the spec's regime is implemented."""
    if spec.training not in IMPLEMENTED_REGIMES:
        raise RegimeNotImplementedError(
            f"training regime {spec.training} is not implemented yet (method {spec.name}; implemented: "
            f"{', '.join(IMPLEMENTED_REGIMES)})")


def train_method(spec: Any, run_settings: RunSettings, run: str | Path, resume: bool = False,
                 steps: int | None = None, progress: Progress = no_progress,
                 on_log: Callable[[dict[str, float]], None] | None = None,
                 on_data: Callable[[Any], None] | None = None, say: Callable[[str], None] | None = None,
                 on_result: Callable[[Any], None] | None = None) -> tuple[Path | None, list[tuple[str, str]]]:
    """Train ``spec``'s network as ``run_settings`` says, in the folder ``run``; returns the exported file
    and the ``(path, reason)`` of every file left out (missing or unreadable).

    :param resume: continue from the newest checkpoint in ``run`` (``run_settings`` should come from
        :meth:`RunSettings.load`).
    :param steps: a new total number of steps (resume only; default: the stored one).
    :param on_data: called with the training set read (before the split), to report its problems.
    :param say: where one-line notes go (options ignored on this device, no tensorboard).
    :param on_result: called on every rank with the :class:`~glocal.train.loop.TrainResult`.
    """
    from glocal.train import runtime
    from glocal.train.data import read_training_set, split_classes
    from glocal.train.export import export_model
    from glocal.train.loop import TrainConfig, train_tuples
    from glocal.train.runtime import ranks_from_environment

    check_regime(spec)
    if spec.training == "classification":
        from glocal.train.classification_run import run_classification

        return run_classification(spec, run_settings, run, model_card, resume, steps, progress, on_log, on_data,
                                  say)
    if spec.training == "detector":  # Detect-to-Retrieve's landmark boxes (glocal.train.detector_run)
        from glocal.train.detector_run import run_detector

        return run_detector(spec, run_settings, run, resume, steps, progress, on_log, on_data, say, on_result)
    run = Path(run)
    options = spec.configure(dict(run_settings.settings), where="--set")
    extractor = spec.create_extractor(options.extractor)
    get_network = getattr(extractor, "trainable_network", None)
    if not callable(get_network):
        raise RegimeNotImplementedError(f"training regime {spec.training} is not implemented yet for method "
                                        f"{spec.name} (its extractor offers no trainable network)")
    train_dict = {**getattr(extractor, "training_defaults", {}), **run_settings.train}
    if steps is not None:
        train_dict["steps"] = steps
    try:
        config = TrainConfig(**train_dict)
    except TypeError as exc:
        raise BadOptionError(f"training settings: {exc}") from None
    network = get_network()
    main = ranks_from_environment().main
    data = read_training_set(run_settings.data, run_settings.images)
    if on_data is not None and main:
        on_data(data)
    train, held_out = split_classes(data, run_settings.eval_fraction, config.seed)
    if not resume and main:
        run_settings.train = dataclasses.asdict(config)
        run_settings.save(run)
    prepare = getattr(extractor, "prepare_training", None)
    if not resume and callable(prepare):
        used = prepare(_readable_images(train.files, config.image_size))
        if used and main:
            (say or runtime._stderr)(f"fitted the whitening on {used} training images (it was not fitted)")
    result = train_tuples(network, resolved_preprocessing(options.extractor), train, held_out, config, run, resume=resume,
                          progress=progress if main else no_progress, on_log=on_log, say=say,
                          objective=regime_objective(spec.training, config))
    if on_result is not None:
        on_result(result)
    if not main:
        return None, result.problems
    card = model_card(spec, options, run_settings, config, data, train, held_out, result)
    return export_model(result.network, run, card), result.problems


def regime_objective(regime: str, config: Any) -> Any:
    """The loss of a tuples regime (:mod:`glocal.train.objectives`): ``tuples``: the contrastive loss on the global
    descriptor with ``config.margin``; ``tuples-superfeatures``: FIRe's losses with mu' = ``config.margin``."""
    from glocal.train.fire_losses import FireLossConfig
    from glocal.train.objectives import global_objective, superfeature_objective

    if regime == "tuples-superfeatures":
        return superfeature_objective(FireLossConfig(margin=config.margin))
    return global_objective(config.margin)


def _readable_images(files: Any, max_side: int) -> Iterator[Any]:
    """The images of ``files`` that load (longest side ``max_side``), in order; the others are skipped (the
    training set reports them)."""
    from glocal.io.images import ImageReadError, load_image

    for path in files:
        try:
            yield load_image(path, max_side=max_side)
        except ImageReadError:
            continue


def model_card(spec: Any, options: Any, run_settings: RunSettings, config: Any, data: Any, train: Any,
               held_out: Any, result: Any) -> dict[str, Any]:
    """What the exported model's card says (:mod:`glocal.train.export`)."""
    extractor = dict(options.to_dict()["extractor"])
    init = extractor.get("checkpoint")
    extractor["checkpoint"] = None  # the exported file itself
    return {"method": spec.name, "regime": spec.training, "init": init,
            "options": {"extractor": extractor}, "settings": _plain(run_settings.settings),
            "data": data.summary(), "train_split": train.summary(),
            "held_out": held_out.summary() if held_out is not None else {},
            "skipped_files": [list(p) for p in result.problems],
            "single_image_classes": list(data.singletons),
            "steps": result.step, "train": dataclasses.asdict(config),
            "evaluations": result.evaluations(), "final_loss": result.history[-1]["loss"] if result.history else None,
            "command": run_settings.command}


def _plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
