"""Recommender models and their registry.

``REGISTRY`` maps a config ``name`` to the model class; the class's ``config_cls`` validates the rest of the
config.  ``build_model`` is the one way the trainer, the CLI and tests make a model from a config; ``register_model``
adds a user's model class (docs/python_api.md).
Importing this package imports torch (the CLI imports it lazily).
"""

from __future__ import annotations

from typing import Any

from recsys.models.base import ModelConfig, Recommender, ScoreFn
from recsys.models.bert4rec import BERT4Rec, BERT4RecConfig
from recsys.models.dccf import DCCF, DCCFConfig
from recsys.models.dnis import DNIS, DNISConfig
from recsys.models.duorec import DuoRec, DuoRecConfig
from recsys.models.ease import EASE, EASEConfig
from recsys.models.gru4rec import GRU4Rec, GRU4RecConfig
from recsys.models.iclrec import ICLRec, ICLRecConfig
from recsys.models.icsrec import ICSRec, ICSRecConfig
from recsys.models.lightgcn import LightGCN, LightGCNConfig
from recsys.models.mf_bpr import MFBPR, MFBPRConfig
from recsys.models.popularity import MostPopular, MostPopularConfig
from recsys.models.rp3beta import RP3beta, RP3betaConfig
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.models.sasrec_bce import SASRecBCE, SASRecBCEConfig
from recsys.models.two_tower import TwoTower, TwoTowerConfig

REGISTRY: dict[str, type[Recommender]] = {
    "popularity": MostPopular,
    "mf_bpr": MFBPR,
    "lightgcn": LightGCN,
    "rp3beta": RP3beta,
    "ease": EASE,
    "sasrec": SASRec,
    "sasrec_bce": SASRecBCE,
    "gru4rec": GRU4Rec,
    "dccf": DCCF,
    "icsrec": ICSRec,
    "iclrec": ICLRec,
    "duorec": DuoRec,
    "bert4rec": BERT4Rec,
    "dnis": DNIS,
    "two_tower": TwoTower,
}


ENTRY_POINT_GROUP = "recsys.models"
"""Installed packages offer models to ``recsys`` under this entry-point group, one entry per model, named by
its config ``name`` (``[project.entry-points."recsys.models"] my_model = "my_pkg.models:MyModel"``): a config
that names such a model loads and registers it, so ``recsys train``, ``evaluate --run`` and ``index --run``
take it like a built-in one (docs/python_api.md)."""


def _config_name(cls: type[Recommender]) -> str:
    """The registry key ``cls`` declares: its config's ``name: Literal["key"] = "key"``. A plain ``str`` or
    another default would register a name that configs cannot select, and a config class outside
    :class:`ModelConfig` would drop its checks (unknown keys, booleans for numbers)."""
    from typing import Literal, get_args, get_origin

    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise TypeError(f"a model must be a subclass of recsys.models.Recommender, got {cls!r}")
    config = getattr(cls, "config_cls", None)
    example = f'name: Literal["{cls.__name__.lower()}"] = "{cls.__name__.lower()}"'
    if not (isinstance(config, type) and issubclass(config, ModelConfig)):
        raise TypeError(
            f"{cls.__name__}.config_cls must be a subclass of recsys.models.ModelConfig, got {config!r}"
        )
    field = config.model_fields.get("name")
    name = None if field is None else field.default
    literal = None if field is None else field.annotation
    if (
        not isinstance(name, str)
        or not name
        or get_origin(literal) is not Literal
        or get_args(literal) != (name,)
    ):
        raise TypeError(
            f"{cls.__name__}.config_cls ({config.__name__}) must declare its registry key as the one value and "
            f"the default of name, e.g. {example}"
        )
    return name


def _entry_value(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_model(cls: type[Recommender], *, replace: bool = False) -> type[Recommender]:
    """Add a model class to :data:`REGISTRY` under its config's ``name``, so that configs, the trainer,
    ``load_run``, evaluation and serving make it like a built-in one; returns ``cls`` (usable as a decorator).

    ``cls.config_cls`` is a :class:`ModelConfig` that declares its key as ``name: Literal["my_model"] =
    "my_model"``. A name already taken by another class, or offered for another class by an installed package
    (:data:`ENTRY_POINT_GROUP`: a run trained here would be loaded elsewhere as the package's model), is
    refused unless ``replace=True``; registering the same class again changes nothing. A process that loads a
    trained run of the model (``recsys.pipeline.load_run``) registers it first, or the model's package offers
    it under :data:`ENTRY_POINT_GROUP`.

    Raises:
        TypeError: ``cls`` is no :class:`Recommender`, or its config does not declare its key as above.
        ValueError: the name is taken, or offered by a package, for another class and ``replace`` is False.
    """
    name = _config_name(cls)
    taken = REGISTRY.get(name)
    offered = _entry_points(name).get(name)
    if not replace and taken is not None and taken is not cls:
        raise ValueError(
            f"model name {name!r} is taken by {_entry_value(taken)}; give {cls.__name__}'s config a name of its "
            "own (name: Literal[...]), or pass replace=True to replace that model everywhere in this process"
        )
    if not replace and taken is None and offered is not None and not _offers(offered, cls):
        raise ValueError(
            f"model name {name!r} is offered by an installed package for {offered.value} (entry point group "
            f"{ENTRY_POINT_GROUP!r}), which any other process would load for runs of this name; give "
            f"{cls.__name__}'s config a name of its own, or pass replace=True"
        )
    REGISTRY[name] = cls
    return cls


def _offers(ep: Any, cls: type) -> bool:
    """Whether entry point ``ep`` names ``cls``: by its text, else by loading it (a package may name the class
    where it re-exports it, ``pkg:Model`` for ``pkg.models:Model``)."""
    if ep.value == _entry_value(cls):
        return True
    try:
        return ep.load() is cls
    except Exception:  # noqa: BLE001 - an offer that does not load offers no class
        return False


def _entry_points(name: str | None = None) -> dict[str, Any]:
    """The installed packages' offers by name (only ``name``'s, when given).

    Raises:
        ImportError: two distributions offer ``name`` (or, without it, any name) for different classes: which
            one loads would depend on the order of ``sys.path``.
    """
    from importlib.metadata import entry_points

    offers: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if name is not None and ep.name != name:
            continue
        other = offers.setdefault(ep.name, ep)
        if other.value != ep.value:
            who = [getattr(e.dist, "name", "?") for e in (other, ep)]
            raise ImportError(
                f"model {ep.name!r} is offered by two installed packages for different classes: {who[0]} "
                f"({other.value}) and {who[1]} ({ep.value}) (entry point group {ENTRY_POINT_GROUP!r}); uninstall one"
            )
    return offers


def known_model_names() -> list[str]:
    """The registered models' names and those installed packages offer (not loaded), sorted."""
    from importlib.metadata import entry_points

    return sorted(set(REGISTRY) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def model_class(name: str) -> type[Recommender]:
    """The model class a config's ``name`` selects: a registered one (the built-in models first: a package
    cannot replace them), else the one an installed package offers under :data:`ENTRY_POINT_GROUP`, loaded and
    registered on first use.

    Raises:
        KeyError: no such model; the message lists the known names.
        ImportError: the entry point does not load, names a class that is no model of that name, or two
            packages offer the name.
    """
    cls = REGISTRY.get(name)
    if cls is not None:
        return cls
    ep = _entry_points(name).get(name)
    if ep is None:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(known_model_names())}")
    where = f"entry point {name} = {ep.value} (group {ENTRY_POINT_GROUP!r})"
    try:
        loaded = ep.load()
        declared = _config_name(loaded)
    except Exception as exc:  # the package's own error, named with the entry point that led to it
        raise ImportError(
            f"model {name!r}: {where} does not load a model: {type(exc).__name__}: {exc}"
        ) from exc
    if declared != name:
        raise ImportError(
            f"model {name!r}: {where} loads {loaded.__qualname__}, whose config name is {declared!r}"
        )
    REGISTRY[name] = loaded  # the offer itself: its text may name the class where its package re-exports it
    return loaded


def build_model(config: str | dict[str, Any] | ModelConfig, n_users: int, n_items: int) -> Recommender:
    """Make a model from a registry name (default config), a config dict with a ``name`` key, or a
    validated config object.  An unknown name is a ``KeyError`` listing the known ones; an invalid config
    a pydantic ``ValidationError`` naming the key."""
    payload: dict[str, Any] | ModelConfig
    if isinstance(config, str):
        name, payload = config, {"name": config}
    elif isinstance(config, ModelConfig):
        name, payload = config.name, config
    else:
        if "name" not in config:
            raise KeyError(f"model config has no 'name'; known models: {known_model_names()}")
        name, payload = config["name"], config
    return model_class(name).from_config(n_users, n_items, payload)


__all__ = [
    "REGISTRY",
    "BERT4Rec",
    "BERT4RecConfig",
    "DCCF",
    "DCCFConfig",
    "DNIS",
    "DNISConfig",
    "DuoRec",
    "DuoRecConfig",
    "EASE",
    "EASEConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "ICSRec",
    "ICSRecConfig",
    "ICLRec",
    "ICLRecConfig",
    "LightGCN",
    "LightGCNConfig",
    "MFBPR",
    "MFBPRConfig",
    "MostPopular",
    "MostPopularConfig",
    "ModelConfig",
    "RP3beta",
    "RP3betaConfig",
    "SASRec",
    "SASRecConfig",
    "SASRecBCE",
    "SASRecBCEConfig",
    "TwoTower",
    "TwoTowerConfig",
    "Recommender",
    "ScoreFn",
    "ENTRY_POINT_GROUP",
    "build_model",
    "known_model_names",
    "model_class",
    "register_model",
]
