"""Where recsys keeps its files: ``$RECSYS_HOME`` (default ``~/.cache/recsys``, see ``features.home``)."""

from __future__ import annotations

import os

from features.home import recsys_home

__all__ = ["recsys_home", "default_tracking_uri", "embedded_tracking_uri"]


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else an embedded SQLite store under ``$RECSYS_HOME``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return embedded_tracking_uri()


def embedded_tracking_uri() -> str:
    """The embedded SQLite store, ``sqlite:///$RECSYS_HOME/mlflow.db``.

    SQLAlchemy percent-decodes the path and reads a ``?`` as the start of the URI's options, so ``%`` and ``?``
    are encoded (a home ``/x/a?b`` put the store at ``/x/a``). Only those: MLflow creates the folder from the
    raw text, so an encoded character leaves an empty folder beside the home (``/x/a%3Fb``), which encoding
    spaces or accents too would do for far more homes."""
    path = str(recsys_home() / "mlflow.db").replace("%", "%25").replace("?", "%3F")
    return f"sqlite:///{path}"
