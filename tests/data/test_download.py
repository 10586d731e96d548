"""The download command (never reaches the network here: urlopen is replaced)."""

from __future__ import annotations

import io
import urllib.error
import zipfile

from fedmtl.data import download as dl
from fedmtl.data import movielens


def test_an_unreachable_server_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    def refuse(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(movielens.urllib.request, "urlopen", refuse)
    assert dl.main(["ml-100k", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ml-100k" in err and "Name or service" in err


def test_the_archive_is_unpacked_into_dest(monkeypatch, tmp_path, capsys):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ml-100k/u.data", "1\t1\t5\t881250949\n")

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(movielens.urllib.request, "urlopen", lambda url, timeout: Resp(buf.getvalue()))
    assert dl.main(["ml-100k", str(tmp_path)]) == 0
    assert (tmp_path / "ml-100k" / "u.data").read_text() == "1\t1\t5\t881250949\n"
    assert capsys.readouterr().out.strip() == str(tmp_path / "ml-100k")
