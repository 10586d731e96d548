"""Fetch MovieLens from GroupLens (needs internet):

    python -m fedmtl.data.download ml-100k DIR     # writes DIR/ml-100k
    python -m fedmtl.data.download ml-1m DIR       # writes DIR/ml-1m

then run with `dataset=movielens100k dataset.path=DIR/ml-100k` (or movielens1m).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error

from ..errors import FedMTLError, print_error
from .movielens import URLS, download


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fedmtl.data.download", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(URLS))
    ap.add_argument("dest")
    args = ap.parse_args(argv)
    try:
        path = download(args.name, args.dest)
    except (FedMTLError, urllib.error.URLError, OSError) as e:
        return print_error(f"downloading {args.name} from {URLS[args.name]}: {e}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
