"""Obtaining datasets that are not passed as a path: MovieLens-100K.

MovieLens-100K may not be redistributed, so the project never ships it.  :func:`obtain_movielens_100k`
looks, in order, for

1. the local benchmark copy (``$RECSYS_SHARED_DATA/ml-100k``, else ``../shared/data/ml-100k`` beside the
   repository), verified file by file against the SHA256 sums published with it;
2. a previous download in ``cache_dir``;
3. the copy inside the ``recbole==1.2.1`` wheel on PyPI (the only network some machines reach): the wheel is
   fetched with ``pip download``, its SHA256 checked, and only ``recbole/dataset_example/ml-100k/
   ml-100k.{inter,user,item}`` extracted.  The ``.inter`` file is identical row for row to ``u.data``.

Both layouts are read by :mod:`features.movielens` into the same frames.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from features._hashing import sha256_file
from features.errors import DataSourceError, DataValidationError

__all__ = [
    "obtain_movielens_100k",
    "ML100K_SHA256",
    "RECBOLE_WHEEL",
    "RECBOLE_WHEEL_SHA256",
    "verify_listed_checksum",
]

# From the benchmark data's SHA256SUMS (GroupLens' ml-100k files).
ML100K_SHA256 = {  # the files that are read first, so a damaged ratings file is the first thing reported
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
    "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
    "u.info": "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b",
    "README": "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52",
}
_ML100K_REQUIRED = ("u.data", "u.user", "u.item", "u.genre")

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
# sha256 of the wheel as served by PyPI (computed once from `pip download recbole==1.2.1 --no-deps`).
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
_WHEEL_DIR = "recbole/dataset_example/ml-100k/"
RECBOLE_ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
_CACHE_NAME = "ml-100k-recbole-1.2.1"


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def default_download_dir() -> Path:
    """``$RECSYS_HOME/downloads`` (``RECSYS_HOME`` defaults to ``~/.cache/recsys``)."""
    from features.home import recsys_home

    return recsys_home() / "downloads"


def shared_candidates() -> list[Path]:
    """Where a local benchmark copy of ml-100k may be: ``$RECSYS_SHARED_DATA/ml-100k``, then the sibling
    ``../shared/data/ml-100k`` of the repository."""
    out = []
    env = os.environ.get("RECSYS_SHARED_DATA")
    if env:
        out.append(Path(env).expanduser() / "ml-100k")
    out.append(_repo_root().parent / "shared" / "data" / "ml-100k")
    return out


def verify_checksums(folder: Path, expected: dict[str, str], required: tuple[str, ...] | None = None) -> None:
    """Check the SHA256 of every file of ``expected`` present in ``folder`` (and that ``required`` exist)."""
    for name in required if required is not None else tuple(expected):
        if not (folder / name).exists():
            raise DataValidationError(folder / name, "an existing file", got="<missing file>")
    for name, digest in expected.items():
        path = folder / name
        if path.exists():
            actual = sha256_file(path)
            if actual != digest:
                raise DataValidationError(
                    path,
                    f"SHA256 {digest}",
                    column="sha256",
                    got=actual,
                    hint="the file differs from the published dataset",
                )


CHECKSUMS = "SHA256SUMS"
_LISTING = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")  # sha256sum's output: digest, space, mode, path


def verify_listed_checksum(path: Path, digest: str, levels: int = 2) -> None:
    """Check ``path``'s ``digest`` (its SHA256) against the nearest ``SHA256SUMS`` that lists it.

    The benchmark folders ship a ``SHA256SUMS`` in ``sha256sum`` format (``<digest>  ./folder/file``) and ask
    every loader to verify what it reads. The file's own folder and up to ``levels`` folders above it are
    searched, nearest first, for a ``SHA256SUMS`` that lists the file: the first listing decides. A file that
    no such ``SHA256SUMS`` lists is not checked; lines in another format are skipped.

    Raises:
        DataValidationError: the listed digest differs (a damaged or replaced copy), naming both.
    """
    target = path.resolve()
    for folder in target.parents[: levels + 1]:  # its folder, then up to `levels` above
        sums = folder / CHECKSUMS
        if not sums.is_file():
            continue
        for number, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            match = _LISTING.match(line.strip())
            if match is None or (folder / match.group(2)).resolve() != target:
                continue
            if match.group(1).lower() != digest:
                raise DataValidationError(
                    path,
                    f"SHA256 {match.group(1).lower()} (as {sums} lists it on line {number})",
                    column="sha256",
                    got=digest,
                    hint="the file differs from the published dataset: a damaged or replaced copy",
                )
            return


def obtain_movielens_100k(
    cache_dir: Path | str | None = None, *, use_shared: bool = True, timeout_s: float = 300.0
) -> Path:
    """A verified MovieLens-100K folder: the local benchmark copy, else the RecBole wheel from PyPI.

    Args:
        cache_dir: where downloads are kept (default ``$RECSYS_HOME/downloads``).
        use_shared: look for the local benchmark copy first (tests switch it off to exercise the download).
        timeout_s: limit for the ``pip download`` call.
    Returns:
        A folder holding either ``u.data``/``u.user``/``u.item``/``u.genre`` or ``ml-100k.inter``/``.user``/
        ``.item``; pass it as ``data.path`` with ``source: movielens_100k``.
    Raises:
        DataValidationError: a local or cached copy whose checksum does not match.
        DataSourceError: the download failed or the wheel's checksum does not match.
    """
    if use_shared:
        for folder in shared_candidates():
            if (folder / "u.data").exists():
                verify_checksums(folder, ML100K_SHA256, _ML100K_REQUIRED)
                return folder
    cache = Path(cache_dir) if cache_dir is not None else default_download_dir()
    target = cache / _CACHE_NAME
    if _cached_ok(target):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ml100k-", dir=cache) as tmp:
        wheel = _download_wheel(Path(tmp), timeout_s)
        staged = Path(tmp) / _CACHE_NAME
        _extract_ml100k(wheel, staged)
        verify_checksums(staged, RECBOLE_ML100K_SHA256)
        if target.exists():  # an invalid earlier copy
            shutil.rmtree(target)
        try:
            os.replace(staged, target)  # atomic: a reader never sees a half-extracted folder
        except OSError:
            if not _cached_ok(target):  # another process won the race with a bad copy: surface it
                raise
    return target


def _cached_ok(target: Path) -> bool:
    if not all((target / name).exists() for name in RECBOLE_ML100K_SHA256):
        return False
    try:
        verify_checksums(target, RECBOLE_ML100K_SHA256)
    except DataValidationError:
        return False
    return True


def _download_wheel(dest: Path, timeout_s: float) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "recbole==1.2.1",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "30",
        "-d",
        str(dest),
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataSourceError(f"could not run `{' '.join(cmd)}`: {exc}") from exc
    wheel = dest / RECBOLE_WHEEL
    if res.returncode != 0 or not wheel.exists():
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-5:])
        raise DataSourceError(
            "MovieLens-100K is not available locally and downloading it from PyPI failed "
            f"(`pip download recbole==1.2.1 --no-deps`, exit {res.returncode}):\n{tail}\n"
            "Set RECSYS_SHARED_DATA to a folder holding ml-100k/, or pass data.path to a MovieLens-100K folder."
        )
    digest = sha256_file(wheel)
    if digest != RECBOLE_WHEEL_SHA256:
        raise DataSourceError(
            f"{wheel.name}: expected SHA256 {RECBOLE_WHEEL_SHA256}, got {digest}; "
            "refusing to use a wheel that differs from the published one"
        )
    return wheel


def _extract_ml100k(wheel: Path, out: Path) -> None:
    """Extract only the three ml-100k atomic files (never the whole wheel, never paths from the archive)."""
    out.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in RECBOLE_ML100K_SHA256:
            try:
                data = zf.read(_WHEEL_DIR + name)
            except KeyError:
                raise DataSourceError(f"{wheel}: expected member {_WHEEL_DIR + name}") from None
            (out / name).write_bytes(data)
