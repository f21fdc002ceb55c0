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


def register_model(cls: type[Recommender], *, replace: bool = False) -> type[Recommender]:
    """Add a model class to :data:`REGISTRY` under its config's ``name``, so that configs, the trainer,
    ``load_run``, evaluation and serving make it like a built-in one; returns ``cls`` (usable as a decorator).

    ``cls.config_cls`` must declare its name as the default of ``name``
    (``name: Literal["my_model"] = "my_model"``), the key a config selects it with. A name already taken by
    another class is refused unless ``replace=True``; registering the same class again changes nothing.
    A process that loads a trained run of the model (``recsys.pipeline.load_run``) registers it first.

    Raises:
        TypeError: ``cls`` is no :class:`Recommender` subclass, or its config has no default ``name``.
        ValueError: the name is taken by another class and ``replace`` is False.
    """
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise TypeError(f"register_model expects a subclass of recsys.models.Recommender, got {cls!r}")
    field = cls.config_cls.model_fields.get("name")
    name = None if field is None else field.default
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"{cls.__name__}.config_cls ({cls.config_cls.__name__}) must give its registry key as the default "
            f'of name, e.g. name: Literal["{cls.__name__.lower()}"] = "{cls.__name__.lower()}"'
        )
    taken = REGISTRY.get(name)
    if taken is not None and taken is not cls and not replace:
        raise ValueError(
            f"model name {name!r} is taken by {taken.__module__}.{taken.__qualname__}; pass replace=True to "
            "replace it"
        )
    REGISTRY[name] = cls
    return cls


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
            raise KeyError(f"model config has no 'name'; known models: {sorted(REGISTRY)}")
        name, payload = config["name"], config
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(REGISTRY)}")
    return REGISTRY[name].from_config(n_users, n_items, payload)


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
    "build_model",
    "register_model",
]
