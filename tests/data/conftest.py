"""Tiny GroupLens-format MovieLens folders written into a test's temp dir.

The real MovieLens files are never needed (nor allowed in the repo): these
writers produce the same layouts with a handful of rows, and every test states
the rows it relies on.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

# ml-100k: raw ids are deliberately sparse and unordered so that dense mapping shows.
ML100K_RATINGS = [  # user, item, rating, ts
    (7, 20, 5, 881250949),
    (3, 10, 3, 891717742),
    (7, 10, 4, 878887116),
    (12, 30, 1, 880606923),
    (3, 20, 2, 886397596),
    (12, 20, 4, 884182806),
]
ML100K_USERS = [  # id, age, gender, occupation, zip
    (3, 23, "M", "writer", "32067"),
    (7, 57, "M", "administrator", "91344"),
    (12, 28, "F", "other", "E2A4H"),  # ml-100k has a few non-numeric zips
    (99, 40, "F", "none", "00000"),  # no ratings: dropped
]
ML100K_GENRES = {10: [0, 1, 1] + [0] * 16, 20: [1] + [0] * 18, 30: [0] * 18 + [1], 40: [0] * 19}
ML100K_ITEMS = [  # id, title, release date
    (10, "GoldenEye (1995)", "01-Jan-1995"),
    (20, "Four Rooms (1995)", "01-Jan-1995"),
    (30, "Caf\xe9 au lait (1994)", ""),  # latin-1 title, unknown date
    (40, "Unrated (1990)", "01-Jan-1990"),  # no ratings: dropped
]

ML1M_RATINGS = [
    (1, 1193, 5, 978300760),
    (1, 661, 3, 978302109),
    (2, 1193, 4, 978298413),
    (2, 3408, 1, 978299000),
    (5, 661, 2, 978244177),
]
ML1M_USERS = [  # id, gender, age, occupation, zip
    (1, "F", 1, 10, "48067"),
    (2, "M", 56, 16, "70072"),
    (5, "M", 25, 20, "55455"),
]
ML1M_MOVIES = [
    (661, "James and the Giant Peach (1996)", "Animation|Children's|Musical"),
    (1193, "One Flew Over the Cuckoo's Nest (1975)", "Drama"),
    (3408, "Erin Brockovich (2000)", "Drama"),
]


def ml100k_texts(ratings=ML100K_RATINGS, users=ML100K_USERS, items=ML100K_ITEMS) -> dict[str, bytes]:
    data = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings)
    user = "".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in users)
    item = "".join(f"{i}|{title}|{date}||http://us.imdb.com/M/title-exact?x|"
                   + "|".join(map(str, ML100K_GENRES[i])) + "\n" for i, title, date in items)
    return {"u.data": data.encode("latin-1"), "u.user": user.encode("latin-1"),
            "u.item": item.encode("latin-1")}


def ml1m_texts(ratings=ML1M_RATINGS, users=ML1M_USERS, movies=ML1M_MOVIES) -> dict[str, bytes]:
    return {
        "ratings.dat": "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ratings).encode("latin-1"),
        "users.dat": "".join(f"{u}::{g}::{a}::{o}::{z}\n" for u, g, a, o, z in users).encode("latin-1"),
        "movies.dat": "".join(f"{i}::{t}::{g}\n" for i, t, g in movies).encode("latin-1"),
    }


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


class _Writers(SimpleNamespace):
    def __repr__(self) -> str:  # keeps hypothesis' falsifying examples short
        return "<MovieLens test writers>"


@pytest.fixture(scope="session")
def ml():
    """The writers above, as a fixture (session-scoped, so hypothesis tests may use it)."""
    return _Writers(ml100k_texts=ml100k_texts, ml1m_texts=ml1m_texts, write_files=write_files,
                           ML100K_RATINGS=ML100K_RATINGS, ML100K_USERS=ML100K_USERS,
                           ML100K_ITEMS=ML100K_ITEMS, ML100K_GENRES=ML100K_GENRES,
                           ML1M_RATINGS=ML1M_RATINGS, ML1M_USERS=ML1M_USERS, ML1M_MOVIES=ML1M_MOVIES)


@pytest.fixture
def ml100k_dir(tmp_path, ml) -> Path:
    return write_files(tmp_path / "ml-100k", ml100k_texts())


@pytest.fixture
def ml1m_dir(tmp_path, ml) -> Path:
    return write_files(tmp_path / "ml-1m", ml1m_texts())
