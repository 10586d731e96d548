"""fedmtl/data/movielens.py: the GroupLens readers.

Both layouts load into a Dataset with dense ids and feature tables; every
malformed input ends in one DataError line that names the file (and the line
where there is one); nothing else ever escapes a reader.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fedmtl.data import movielens
from fedmtl.data.dataset import Dataset
from fedmtl.errors import DataError


def raises_data_error(call, *names: str) -> str:
    """Run `call`, expect a DataError, return its one-line message after checking it names `names`."""
    with pytest.raises(DataError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg, f"error message spans several lines: {msg!r}"
    for name in names:
        assert name in msg, f"{name!r} not named in {msg!r}"
    return msg


# --- the ml-100k layout ---------------------------------------------------------------------


def test_ml100k_maps_raw_ids_densely_in_sorted_order(ml100k_dir, ml):
    ds = movielens.load_ml100k(ml100k_dir)
    assert ds.name == "movielens100k"
    # users 3, 7, 12 rated; 99 did not and is dropped. Items 10, 20, 30 rated; 40 dropped.
    assert ds.n_users == 3 and ds.n_items == 3
    assert ds.raw_user_ids.tolist() == [3, 7, 12]
    assert ds.raw_item_ids.tolist() == [10, 20, 30]
    inter = ds.interactions
    assert list(inter.columns) == ["user", "item", "rating", "ts"]
    assert len(inter) == len(ml.ML100K_RATINGS)
    back = {(int(ds.raw_user_ids[u]), int(ds.raw_item_ids[i]), float(r), int(t))
            for u, i, r, t in inter.itertuples(index=False)}
    assert back == {(u, i, float(r), t) for u, i, r, t in ml.ML100K_RATINGS}
    assert inter["user"].dtype == np.int64 and inter["item"].dtype == np.int64


def test_ml100k_feature_tables(ml100k_dir, ml):
    ds = movielens.load_ml100k(ml100k_dir)
    assert ds.user_cat.shape == (3, 4)  # age group, gender, occupation, first zip digit
    assert len(ds.user_cards) == 4
    assert (ds.user_cat < np.array(ds.user_cards)).all() and (ds.user_cat >= 0).all()
    # ages 23, 57, 28 -> groups by the ml-1m edges [18, 25, 35, 45, 50, 56]
    assert ds.user_cat[:, 0].tolist() == [1, 6, 2]
    # zip 32067 -> 3+1, 91344 -> 9+1, E2A4H (not a digit) -> 0
    assert ds.user_cat[:, 3].tolist() == [4, 10, 0]
    assert ds.item_cat.shape == (3, 1) and ds.item_cards == [9]
    assert ds.item_cat[2, 0] == 0  # unknown release date
    assert ds.item_multi.shape == (3, 19)
    for dense, raw in enumerate(ds.raw_item_ids):
        assert ds.item_multi[dense].tolist() == ml.ML100K_GENRES[int(raw)]


# --- the ml-1m layout -----------------------------------------------------------------------


def test_ml1m_loads_with_its_18_named_genres(ml1m_dir, ml):
    ds = movielens.load_ml1m(ml1m_dir)
    assert ds.name == "movielens1m"
    assert ds.n_users == 3 and ds.n_items == 3
    assert ds.raw_user_ids.tolist() == [1, 2, 5]
    assert ds.raw_item_ids.tolist() == [661, 1193, 3408]
    assert len(ds.interactions) == len(ml.ML1M_RATINGS)
    assert ds.item_multi.shape == (3, 18)
    genres = movielens.ML1M_GENRES
    peach = ds.item_multi[0]
    assert {genres[g] for g in np.flatnonzero(peach)} == {"Animation", "Children's", "Musical"}
    assert {genres[g] for g in np.flatnonzero(ds.item_multi[1])} == {"Drama"}
    assert ds.user_cat.shape == (3, 4)
    assert ds.user_cat[:, 0].tolist() == [0, 6, 2]  # ages 1, 56, 25


# --- layout detection -----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["ml-100k", "ml-1m"])
def test_load_detects_the_layout_in_the_folder_or_its_named_subfolder(tmp_path, ml, layout):
    texts = ml.ml100k_texts() if layout == "ml-100k" else ml.ml1m_texts()
    expected = "movielens100k" if layout == "ml-100k" else "movielens1m"
    direct = ml.write_files(tmp_path / "direct", texts)
    assert movielens.load(direct).name == expected
    ml.write_files(tmp_path / "parent" / layout, texts)
    assert movielens.load(tmp_path / "parent").name == expected


def test_load_of_a_folder_without_movielens_files_names_the_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    raises_data_error(lambda: movielens.load(tmp_path), str(tmp_path), "no MovieLens files")
    raises_data_error(lambda: movielens.load(tmp_path / "absent"), "absent")


def test_a_missing_folder_is_a_data_error(tmp_path):
    raises_data_error(lambda: movielens.load_ml100k(tmp_path / "nope"), "nope")
    raises_data_error(lambda: movielens.load_ml1m(tmp_path / "nope"), "nope")


# --- malformed files: one line naming file and line -----------------------------------------


def _ml100k_with(tmp_path, ml, name: str, content: bytes) -> Path:
    files = ml.ml100k_texts()
    files[name] = content
    return ml.write_files(tmp_path / "ml-100k", files)


def _ml1m_with(tmp_path, ml, name: str, content: bytes) -> Path:
    files = ml.ml1m_texts()
    files[name] = content
    return ml.write_files(tmp_path / "ml-1m", files)


def test_wrong_separator_names_file_and_line(tmp_path, ml):
    folder = _ml100k_with(tmp_path, ml, "u.data", b"3\t10\t3\t891717742\n7,20,5,881250949\n")
    msg = raises_data_error(lambda: movielens.load_ml100k(folder), f"{folder / 'u.data'}:2")
    assert "'\\t'" in msg and "found 1" in msg


def test_ml1m_single_colon_separator_names_file_and_line(tmp_path, ml):
    folder = _ml1m_with(tmp_path, ml, "ratings.dat", b"1:1193:5:978300760\n")
    raises_data_error(lambda: movielens.load_ml1m(folder), f"{folder / 'ratings.dat'}:1", "'::'")


def test_missing_column_names_file_and_line(tmp_path, ml):
    users = ml.ml100k_texts()["u.user"] + b"13|30|F|other\n"  # no zip code
    folder = _ml100k_with(tmp_path, ml, "u.user", users)
    msg = raises_data_error(lambda: movielens.load_ml100k(folder), f"{folder / 'u.user'}:5")
    assert "expected 5 fields" in msg and "found 4" in msg


def test_too_few_genre_fields_in_u_item(tmp_path, ml):
    folder = _ml100k_with(tmp_path, ml, "u.item", b"10|GoldenEye (1995)|01-Jan-1995||url|0|1\n")
    raises_data_error(lambda: movielens.load_ml100k(folder), f"{folder / 'u.item'}:1", "found 7")


def test_genre_flags_must_be_0_or_1(tmp_path, ml):
    folder = _ml100k_with(tmp_path, ml, "u.item",
                          b"10|GoldenEye (1995)|01-Jan-1995||url|" + b"|".join([b"2"] + [b"0"] * 18) + b"\n")
    raises_data_error(lambda: movielens.load_ml100k(folder), f"{folder / 'u.item'}:1", "genre flags")


@pytest.mark.parametrize("line, column", [
    (b"x3\t10\t3\t891717742", "user"),
    (b"3\tten\t3\t891717742", "item"),
    (b"3\t10\t3\t8917.5", "timestamp"),
])
def test_non_numeric_id_names_file_line_and_column(tmp_path, ml, line, column):
    folder = _ml100k_with(tmp_path, ml, "u.data", b"7\t20\t5\t881250949\n" + line + b"\n")
    raises_data_error(lambda: movielens.load_ml100k(folder), f"{folder / 'u.data'}:2", f"'{column}'")


def test_non_numeric_user_id_in_users_file(tmp_path, ml):
    folder = _ml1m_with(tmp_path, ml, "users.dat", b"1::F::1::10::48067\nabc::M::56::16::70072\n")
    raises_data_error(lambda: movielens.load_ml1m(folder), f"{folder / 'users.dat'}:2", "'UserID'")


@pytest.mark.parametrize("rating", [b"0", b"6", b"5.5", b"-1", b"nan", b"inf"])
def test_rating_outside_1_to_5_names_file_and_line(tmp_path, ml, rating):
    folder = _ml100k_with(tmp_path, ml, "u.data", b"3\t10\t3\t891717742\n\n3\t20\t" + rating + b"\t1\n")
    raises_data_error(lambda: movielens.load_ml100k(folder), f"{folder / 'u.data'}:3")


def test_non_numeric_rating(tmp_path, ml):
    folder = _ml1m_with(tmp_path, ml, "ratings.dat", b"1::1193::five::978300760\n")
    raises_data_error(lambda: movielens.load_ml1m(folder), f"{folder / 'ratings.dat'}:1", "'rating'")


@pytest.mark.parametrize("content", [b"", b"\n\n", b"   \n\t\n"])
def test_empty_file_names_the_file(tmp_path, ml, content):
    folder = _ml100k_with(tmp_path, ml, "u.item", content)
    raises_data_error(lambda: movielens.load_ml100k(folder), str(folder / "u.item"), "empty")


def test_unknown_ml1m_genre_names_file_line_and_genre(tmp_path, ml):
    movies = ml.ml1m_texts()["movies.dat"] + b"42::Some Film (1999)::Drama|Cyberpunk\n"
    folder = _ml1m_with(tmp_path, ml, "movies.dat", movies)
    raises_data_error(lambda: movielens.load_ml1m(folder), f"{folder / 'movies.dat'}:4", "'Cyberpunk'")


@pytest.mark.parametrize("layout, name", [("ml-100k", "u.data"), ("ml-100k", "u.user"), ("ml-100k", "u.item"),
                                          ("ml-1m", "ratings.dat"), ("ml-1m", "users.dat"),
                                          ("ml-1m", "movies.dat")])
def test_missing_file_names_the_file(ml100k_dir, ml1m_dir, layout, name):
    folder = ml100k_dir if layout == "ml-100k" else ml1m_dir
    (folder / name).unlink()
    reader = movielens.load_ml100k if layout == "ml-100k" else movielens.load_ml1m
    raises_data_error(lambda: reader(folder), str(folder / name), "not found")


def test_binary_garbage_is_a_data_error_naming_the_file(tmp_path, ml):
    # GroupLens files are latin-1, so every byte decodes; garbage fails on its fields.
    folder = _ml100k_with(tmp_path, ml, "u.data", bytes(range(256)) * 4)
    raises_data_error(lambda: movielens.load_ml100k(folder), str(folder / "u.data"))


def test_ratings_of_unknown_users_or_items_are_a_data_error(tmp_path, ml):
    folder = _ml100k_with(tmp_path, ml, "u.data", b"3\t10\t3\t1\n55\t10\t3\t1\n")
    raises_data_error(lambda: movielens.load_ml100k(folder), "users absent", "55")
    folder = _ml1m_with(tmp_path, ml, "ratings.dat", b"1::1193::5::1\n1::77::5::1\n")
    raises_data_error(lambda: movielens.load_ml1m(folder), "items absent", "77")


# --- regressions found by the property test below ---------------------------------------------


def test_latin1_superscript_digits_are_not_taken_for_digits(tmp_path, ml):
    # '\xb2' (superscript two) passes str.isdigit but int() rejects it; it used to crash.
    files = ml.ml100k_texts()
    files["u.item"] = files["u.item"].replace(b"01-Jan-1995", b"01-Jan-199\xb2")
    files["u.user"] = files["u.user"].replace(b"|32067", b"|\xb22067")
    ds = movielens.load_ml100k(ml.write_files(tmp_path / "a", files))
    assert ds.item_cat[:2, 0].tolist() == [0, 0]  # release year unknown
    assert ds.user_cat[0, 3] == 0  # zip region unknown
    files = ml.ml1m_texts()
    files["movies.dat"] = files["movies.dat"].replace(b"(1975)", b"(197\xb2)")
    ds = movielens.load_ml1m(ml.write_files(tmp_path / "b", files))
    assert ds.item_cat[1, 0] == 0


@pytest.mark.parametrize("line", [b"3\t10\t3\t99999999999999999999999", b"99999999999999999999999\t10\t3\t1"])
def test_numbers_beyond_64_bits_are_a_data_error(tmp_path, ml, line):
    folder = _ml100k_with(tmp_path, ml, "u.data", line + b"\n")
    raises_data_error(lambda: movielens.load_ml100k(folder), f"{folder / 'u.data'}:1", "64-bit")


def test_lines_end_only_at_newline(tmp_path, ml):
    # latin-1 decodes 0x85 and 0x1c to characters str.splitlines treats as line breaks.
    files = ml.ml100k_texts()
    files["u.item"] = files["u.item"].replace(b"GoldenEye", b"Golden\x85Eye\x1c")
    ds = movielens.load_ml100k(ml.write_files(tmp_path / "a", files))
    assert ds.n_items == 3
    # ... and an error further down names the line a text editor shows.
    files["u.item"] += b"41|Broken|\n"
    folder = ml.write_files(tmp_path / "b", files)
    raises_data_error(lambda: movielens.load_ml100k(folder), f"{folder / 'u.item'}:5")


def test_windows_line_endings_load(tmp_path, ml):
    files = {k: v.replace(b"\n", b"\r\n") for k, v in ml.ml1m_texts().items()}
    ds = movielens.load_ml1m(ml.write_files(tmp_path / "a", files))
    assert ds.n_items == 3 and ds.item_multi[1].sum() == 1  # "Drama\r" would be an unknown genre


# --- property: every input is a Dataset or a DataError ----------------------------------------

# Bytes that make the readers' job hard: separators, digits, signs, latin-1 digit-like
# characters (superscripts pass str.isdigit but not int()), line breaks, NUL.
NASTY = [b"\t", b"|", b"::", b":", b"\n", b"\r\n", b"0", b"1", b"5", b"9", b"-", b".", b"e", b" ",
         b"\xb2", b"\xb9", b"\x85", b"\x00", b"nan", b"99999999999999999999999", b"Drama", b"(1999)"]

mutation = st.one_of(
    st.tuples(st.just("field"), st.tuples(st.integers(0, 50), st.integers(0, 30)), st.sampled_from(NASTY + [b""])),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.sampled_from(NASTY)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
    st.tuples(st.just("replace"), st.integers(0, 10_000), st.sampled_from(NASTY)),
)


def _mutate(content: bytes, edits, sep: bytes) -> bytes:
    b = bytearray(content)
    for kind, pos, arg in edits:
        if kind == "field":  # replace one whole field of one line
            lines = bytes(b).split(b"\n")
            line, field = pos
            fields = lines[line % len(lines)].split(sep)
            fields[field % len(fields)] = arg
            lines[line % len(lines)] = sep.join(fields)
            b = bytearray(b"\n".join(lines))
            continue
        pos = pos % (len(b) + 1)
        if kind == "insert":
            b[pos:pos] = arg
        elif kind == "delete":
            del b[pos:pos + arg]
        else:
            b[pos:pos + len(arg)] = arg
    return bytes(b)


def _check_dataset(ds: Dataset) -> None:
    """What a Dataset from a reader always satisfies."""
    inter = ds.interactions
    assert ds.n_users == len(ds.raw_user_ids) and ds.n_items == len(ds.raw_item_ids)
    assert sorted(inter["user"].unique().tolist()) == list(range(ds.n_users))
    assert sorted(inter["item"].unique().tolist()) == list(range(ds.n_items))
    assert inter["rating"].between(1, 5).all()
    assert ds.user_cat.shape == (ds.n_users, 4) and ds.item_multi.shape[0] == ds.n_items
    assert ((ds.user_cat >= 0) & (ds.user_cat < np.array(ds.user_cards))).all()
    assert ((ds.item_cat >= 0) & (ds.item_cat < np.array(ds.item_cards))).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=st.sampled_from(["ml-100k", "ml-1m"]), which=st.integers(0, 2),
       whole=st.one_of(st.none(), st.binary(max_size=200)), edits=st.lists(mutation, min_size=1, max_size=6))
def test_any_input_gives_a_dataset_or_a_one_line_data_error(ml, layout, which, whole, edits):
    texts = ml.ml100k_texts() if layout == "ml-100k" else ml.ml1m_texts()
    name = sorted(texts)[which]
    sep = (b"\t" if name == "u.data" else b"|") if layout == "ml-100k" else b"::"
    texts[name] = whole if whole is not None else _mutate(texts[name], edits, sep)
    with tempfile.TemporaryDirectory() as tmp:
        folder = ml.write_files(Path(tmp) / layout, texts)
        try:
            ds = movielens.load(folder)
        except DataError as e:
            assert "\n" not in str(e) and str(e)
        else:
            _check_dataset(ds)


_FIELD = st.one_of(st.integers(0, 10**6).map(str), st.sampled_from(["3", "4.5", "5.", "007", " 4", "+2", "1e0", "",
                                                                   "nan", "2.5.1", "99999999999999999999", "1_0"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_FIELD, _FIELD, st.one_of(st.sampled_from(["1", "3", "4.5", "5", "2.25"]), _FIELD),
                               _FIELD, st.sampled_from(["", "::7", "\r", "\t1"])), min_size=1, max_size=8),
       sep=st.sampled_from(["::", "\t"]), blank=st.booleans())
def test_the_fast_ratings_reader_reads_what_the_line_reader_reads(tmp_path, rows, sep, blank):
    """_ratings takes pandas' C parser where a ratings file is plainly well formed, else reads it line by
    line: the same frame (values and dtypes) as the line reader, or the line reader's one DataError line."""
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "ratings"
    lines = [sep.join(r[:4]) + r[4].replace("::", sep) for r in rows]
    path.write_bytes(("\n".join(lines) + ("\n\n" if blank else "\n")).encode("latin-1"))
    try:
        want = movielens._ratings_lines(path, sep)
    except DataError as e:
        with pytest.raises(DataError) as info:
            movielens._ratings(path, sep)
        assert str(info.value) == str(e)
        return
    got = movielens._ratings(path, sep)
    assert got.equals(want) and list(got.dtypes) == list(want.dtypes)


def test_the_fast_ratings_reader_takes_plain_files(tmp_path):
    """A plainly well-formed ratings file is read by the C parser (not the line reader)."""
    path = tmp_path / "ratings.dat"
    path.write_bytes(b"1::10::4::978300760\n2::11::3::978300761\n\n3::10::5::978300762\n")
    fast = movielens._ratings_fast(path, "::")
    assert fast is not None and fast.equals(movielens._ratings_lines(path, "::"))
    assert fast["rating"].tolist() == [4.0, 3.0, 5.0] and fast["user"].tolist() == [1, 2, 3]
    path.write_bytes(b"1::10::4::978300760\n2::11::3.5::978300761\n")  # a decimal rating: read line by line
    assert movielens._ratings_fast(path, "::") is None and movielens._ratings(path, "::")["rating"].tolist() == [4.0, 3.5]
