"""MovieLens readers (GroupLens ml-100k and ml-1m layouts) and the download code.

Every malformed input ends in one `DataError` line naming the file, the line and
what was expected; nothing else escapes the readers.
"""

from __future__ import annotations

import io
import logging
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .dataset import Dataset

log = logging.getLogger(__name__)

URLS = {
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
}
AGE_EDGES = [18, 25, 35, 45, 50, 56]  # ml-1m's age groups, applied to ml-100k ages too
ML1M_GENRES = [
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]


def download(name: str, dest: str | Path) -> Path:
    """Fetch a GroupLens archive into `dest` (needs internet; never run by the tests)."""
    if name not in URLS:
        raise DataError(f"unknown MovieLens variant {name!r}; expected one of {sorted(URLS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(URLS[name], timeout=60) as resp:  # noqa: S310 (fixed URL)
        zipfile.ZipFile(io.BytesIO(resp.read())).extractall(dest)
    return dest / name


def _read_lines(path: Path, encoding: str = "latin-1") -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: cannot decode as {encoding} at byte {e.start}") from None
    # Lines end at \n (or \r\n) only: str.splitlines would also break at latin-1's
    # \x85 and \x1c-\x1e, which can sit inside a title, and shift every line number.
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: file is empty")
    return lines


def _split_rows(path: Path, sep: str, min_fields: int, what: str, encoding="latin-1"):
    """Yield (line number, fields) for every non-blank line with at least `min_fields`."""
    for no, line in enumerate(_read_lines(path, encoding), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < min_fields:
            raise DataError(
                f"{path}:{no}: expected {min_fields} fields separated by {sep!r} ({what}), "
                f"found {len(fields)}"
            )
        yield no, fields


def _int(path: Path, no: int, value: str, column: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise DataError(f"{path}:{no}: column {column!r} must be an integer, got {value!r}") from None
    if not -2**63 <= number < 2**63:  # pandas/numpy hold ids and timestamps as int64
        raise DataError(f"{path}:{no}: column {column!r} is out of the 64-bit integer range: {value.strip()!r}")
    return number


def _ratings(path: Path, sep: str) -> pd.DataFrame:
    """The ratings file's user, item, rating, timestamp columns: pandas' C parser where the file is
    plainly well formed (ML-1M's million lines in 0.3 s instead of 1.4), else line by line, which
    reads the same values and names the first bad line."""
    fast = _ratings_fast(path, sep)
    return fast if fast is not None else _ratings_lines(path, sep)


def _ratings_fast(path: Path, sep: str) -> pd.DataFrame | None:
    """`_ratings_lines`' frame, or None where the file is not one it surely reads the same: a byte other
    than digits, the separator and newlines (no spaces, signs, quotes, '\r', NaN or decimals, which the
    two read differently: the C parser takes "5." as an integer), rows of unequal width, an empty
    field, a value outside an int64 or a rating outside 1..5. MovieLens' own files are digits only."""
    import csv
    import re

    try:
        text = path.read_bytes().decode("latin-1")
    except OSError:
        return None
    if re.search(r"[^0-9\n" + re.escape(sep) + "]", text) or (sep != "\t" and "\t" in text):
        return None
    body = text.replace(sep, "\t") if sep != "\t" else text
    try:
        frame = pd.read_csv(io.StringIO(body), sep="\t", header=None, usecols=[0, 1, 2, 3], quoting=csv.QUOTE_NONE,
                            dtype={0: np.int64, 1: np.int64, 2: np.float64, 3: np.int64}, na_filter=False,
                            float_precision="round_trip", engine="c")
    except Exception:  # noqa: BLE001 whatever the C parser refuses, the line-by-line reader names
        return None
    frame.columns = ["user", "item", "rating", "ts"]
    if frame.empty or not frame["rating"].between(1.0, 5.0).all():
        return None
    return frame


def _ratings_lines(path: Path, sep: str) -> pd.DataFrame:
    rows = []
    for no, f in _split_rows(path, sep, 4, "user, item, rating, timestamp"):
        user, item = _int(path, no, f[0], "user"), _int(path, no, f[1], "item")
        try:
            rating = float(f[2])
        except ValueError:
            raise DataError(f"{path}:{no}: column 'rating' must be a number, got {f[2]!r}") from None
        if not 1.0 <= rating <= 5.0:
            raise DataError(f"{path}:{no}: rating {rating} is outside 1..5")
        rows.append((user, item, rating, _int(path, no, f[3], "timestamp")))
    return pd.DataFrame(rows, columns=["user", "item", "rating", "ts"])


def _age_group(age: int) -> int:
    return int(np.searchsorted(AGE_EDGES, age, side="right"))


def _codes(values: list[str]) -> tuple[np.ndarray, int]:
    cats = sorted(set(values))
    index = {c: k for k, c in enumerate(cats)}
    return np.array([index[v] for v in values], dtype=np.int64), len(cats)


def _year_bucket(year: int | None) -> int:
    """0 for unknown, then decades up to the 1990s split in two halves."""
    if year is None:
        return 0
    edges = [1930, 1950, 1960, 1970, 1980, 1990, 1995]
    return 1 + int(np.searchsorted(edges, year, side="right"))


def _assemble(name, ratings, users, items, genres) -> Dataset:
    """Map raw ids to dense ones; users/items without ratings are dropped."""
    user_ids = np.array(sorted(ratings["user"].unique()))
    item_ids = np.array(sorted(ratings["item"].unique()))
    missing_u = set(user_ids) - set(users)
    missing_i = set(item_ids) - set(items)
    if missing_u:
        raise DataError(f"{name}: ratings name users absent from the user file, e.g. {sorted(missing_u)[:3]}")
    if missing_i:
        raise DataError(f"{name}: ratings name items absent from the item file, e.g. {sorted(missing_i)[:3]}")
    umap = {u: k for k, u in enumerate(user_ids)}
    imap = {i: k for k, i in enumerate(item_ids)}
    inter = pd.DataFrame({
        "user": ratings["user"].map(umap).astype(np.int64),
        "item": ratings["item"].map(imap).astype(np.int64),
        "rating": ratings["rating"].astype(np.float32),
        "ts": ratings["ts"].astype(np.int64),
    })
    u_rows = [users[u] for u in user_ids]
    gender, n_gender = _codes([r[1] for r in u_rows])
    occupation, n_occ = _codes([r[2] for r in u_rows])
    age = np.array([_age_group(r[0]) for r in u_rows], dtype=np.int64)
    # isdecimal, not isdigit: latin-1 superscripts pass isdigit but int() rejects them.
    zip1 = np.array([(int(r[3][0]) + 1) if r[3][:1].isdecimal() else 0 for r in u_rows], dtype=np.int64)
    i_rows = [items[i] for i in item_ids]
    year = np.array([_year_bucket(r[0]) for r in i_rows], dtype=np.int64)
    multi = np.array([r[1] for r in i_rows], dtype=np.float32).reshape(len(i_rows), len(genres))
    return Dataset(
        name=name,
        interactions=inter,
        n_users=len(user_ids),
        n_items=len(item_ids),
        user_cat=np.stack([age, gender, occupation, zip1], axis=1),
        user_cards=[len(AGE_EDGES) + 1, n_gender, n_occ, 11],
        item_cat=year[:, None],
        item_cards=[9],
        item_multi=multi,
        raw_user_ids=user_ids,
        raw_item_ids=item_ids,
    )


def _year_from(text: str) -> int | None:
    digits = text.strip()[-4:]
    return int(digits) if digits.isdecimal() else None


def load_ml100k(folder: str | Path) -> Dataset:
    """Read `u.data`, `u.user` and `u.item` of a GroupLens ml-100k folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: MovieLens folder not found")
    ratings = _ratings(folder / "u.data", "\t")
    users = {}
    path = folder / "u.user"
    for no, f in _split_rows(path, "|", 5, "user id|age|gender|occupation|zip"):
        users[_int(path, no, f[0], "user id")] = (_int(path, no, f[1], "age"), f[2], f[3], f[4])
    items = {}
    path = folder / "u.item"
    for no, f in _split_rows(path, "|", 24, "movie id|title|release date|video date|url|19 genre flags"):
        flags = f[-19:]
        if any(x.strip() not in ("0", "1") for x in flags):
            raise DataError(f"{path}:{no}: the last 19 fields must be 0/1 genre flags")
        items[_int(path, no, f[0], "movie id")] = (_year_from(f[2]), [float(x) for x in flags])
    return _assemble("movielens100k", ratings, users, items, range(19))


def load_ml1m(folder: str | Path) -> Dataset:
    """Read `ratings.dat`, `users.dat` and `movies.dat` (`::`-separated) of ml-1m."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: MovieLens folder not found")
    ratings = _ratings(folder / "ratings.dat", "::")
    users = {}
    path = folder / "users.dat"
    for no, f in _split_rows(path, "::", 5, "UserID::Gender::Age::Occupation::Zip-code"):
        users[_int(path, no, f[0], "UserID")] = (_int(path, no, f[2], "Age"), f[1], f[3], f[4])
    items = {}
    path = folder / "movies.dat"
    for no, f in _split_rows(path, "::", 3, "MovieID::Title::Genres"):
        names = f[2].strip().split("|")
        unknown = [g for g in names if g not in ML1M_GENRES]
        if unknown:
            raise DataError(f"{path}:{no}: unknown genre {unknown[0]!r}; expected one of {ML1M_GENRES}")
        title = f[1].strip()
        year = int(title[-5:-1]) if title.endswith(")") and title[-5:-1].isdecimal() else None
        items[_int(path, no, f[0], "MovieID")] = (year, [float(g in names) for g in ML1M_GENRES])
    return _assemble("movielens1m", ratings, users, items, ML1M_GENRES)


def load(folder: str | Path) -> Dataset:
    """Detect the layout: `folder` (or `folder/ml-100k`, `folder/ml-1m`) is read."""
    folder = Path(folder)
    for cand in (folder, folder / "ml-100k", folder / "ml-1m"):
        if (cand / "u.data").is_file():
            return load_ml100k(cand)
        if (cand / "ratings.dat").is_file():
            return load_ml1m(cand)
    raise DataError(
        f"{folder}: no MovieLens files found (expected u.data/u.user/u.item or "
        "ratings.dat/users.dat/movies.dat)"
    )
