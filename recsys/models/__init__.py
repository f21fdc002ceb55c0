"""Recommender models and their registry.

``REGISTRY`` maps a config ``name`` to the model class; the class's ``config_cls`` validates the rest of the
config.  ``build_model`` is the one way the trainer, the CLI and tests make a model from a config; ``register_model``
adds a user's model class (docs/python_api.md).
Importing this package imports torch (the CLI imports it lazily).
"""

from __future__ import annotations

from typing import Any

from recsys.models.base import ModelConfig, Recommender, ScoreFn
from recsys.models.dccf import DCCF, DCCFConfig
from recsys.models.dnis import DNIS, DNISConfig
from recsys.models.icsrec import ICSRec, ICSRecConfig
from recsys.models.lightgcn import LightGCN, LightGCNConfig
from recsys.models.mf_bpr import MFBPR, MFBPRConfig
from recsys.models.popularity import MostPopular, MostPopularConfig
from recsys.models.rp3beta import RP3beta, RP3betaConfig
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.models.two_tower import TwoTower, TwoTowerConfig

REGISTRY: dict[str, type[Recommender]] = {
    "popularity": MostPopular,
    "mf_bpr": MFBPR,
    "lightgcn": LightGCN,
    "rp3beta": RP3beta,
    "sasrec": SASRec,
    "dccf": DCCF,
    "icsrec": ICSRec,
    "dnis": DNIS,
    "two_tower": TwoTower,
}


ENTRY_POINT_GROUP = "recsys.models"
"""Installed packages offer models to ``recsys`` under this entry-point group, one entry per model, named by
its config ``name`` (``[project.entry-points."recsys.models"] my_model = "my_pkg.models:MyModel"``): a config
that names such a model loads and registers it, so ``recsys train``, ``evaluate --run`` and ``index --run``
take it like a built-in one (docs/python_api.md)."""


def _config_name(cls: type[Recommender]) -> str:
    """The registry key ``cls`` declares: the default of its config's ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise TypeError(f"a model must be a subclass of recsys.models.Recommender, got {cls!r}")
    field = cls.config_cls.model_fields.get("name")
    name = None if field is None else field.default
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"{cls.__name__}.config_cls ({cls.config_cls.__name__}) must give its registry key as the default "
            f'of name, e.g. name: Literal["{cls.__name__.lower()}"] = "{cls.__name__.lower()}"'
        )
    return name


def register_model(cls: type[Recommender], *, replace: bool = False) -> type[Recommender]:
    """Add a model class to :data:`REGISTRY` under its config's ``name``, so that configs, the trainer,
    ``load_run``, evaluation and serving make it like a built-in one; returns ``cls`` (usable as a decorator).

    ``cls.config_cls`` must declare its name as the default of ``name``
    (``name: Literal["my_model"] = "my_model"``), the key a config selects it with. A name already taken by
    another class is refused unless ``replace=True``; registering the same class again changes nothing.
    A process that loads a trained run of the model (``recsys.pipeline.load_run``) registers it first, or
    the model's package offers it under the :data:`ENTRY_POINT_GROUP` entry points.

    Raises:
        TypeError: ``cls`` is no :class:`Recommender` subclass, or its config has no default ``name``.
        ValueError: the name is taken by another class and ``replace`` is False.
    """
    name = _config_name(cls)
    taken = REGISTRY.get(name)
    if taken is not None and taken is not cls and not replace:
        raise ValueError(
            f"model name {name!r} is taken by {taken.__module__}.{taken.__qualname__}; pass replace=True to "
            "replace it"
        )
    REGISTRY[name] = cls
    return cls


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_model_names() -> list[str]:
    """The registered models' names and those installed packages offer (not loaded), sorted."""
    return sorted(set(REGISTRY) | set(_entry_points()))


def model_class(name: str) -> type[Recommender]:
    """The model class a config's ``name`` selects: a registered one, else the one an installed package
    offers under :data:`ENTRY_POINT_GROUP`, loaded and registered on first use.

    Raises:
        KeyError: no such model; the message lists the known names.
        ImportError: the entry point does not load, or names a class that is no model of that name.
    """
    cls = REGISTRY.get(name)
    if cls is not None:
        return cls
    ep = _entry_points().get(name)
    if ep is None:
        raise KeyError(f"unknown model {name!r}; known models: {known_model_names()}")
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
    return register_model(loaded)


def build_model(config: str | dict[str, Any] | ModelConfig, n_users: int, n_items: int) -> Recommender:
    """Make a model from a registry name (default config), a config dict with a ``name`` key, or a
    validated config object.  An unknown name is a ``KeyError`` listing the known ones; an invalid config
    a pydantic ``ValidationError`` naming the key."""
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
    "DCCF",
    "DCCFConfig",
    "DNIS",
    "DNISConfig",
    "ICSRec",
    "ICSRecConfig",
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
