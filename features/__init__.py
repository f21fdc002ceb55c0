"""Data layer: read, validate, filter, split and encode raw recommendation data with Polars, and cache the
result as a prepared dataset folder (Parquet + manifest.json).  See docs/architecture.md for the contract.

    from features import DataConfig, prepare
    ds = prepare(DataConfig(source="user_lines", path="../shared/data/gowalla-lightgcn"))
    ds.matrix("train")   # scipy.sparse.csr_matrix [n_users, n_items], float32 ones

Only Polars, NumPy, SciPy and pydantic are imported here (no torch), so importing ``features`` is cheap.
"""

from features.config import ColumnsConfig, DataConfig, SplitConfig
from features.dataset import PreparedDataset
from features.errors import DataSourceError, DataValidationError
from features.prepare import prepare
from features.sources import obtain_movielens_100k

__all__ = [
    "ColumnsConfig",
    "DataConfig",
    "SplitConfig",
    "PreparedDataset",
    "prepare",
    "DataValidationError",
    "DataSourceError",
    "obtain_movielens_100k",
]
