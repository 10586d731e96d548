"""The project's own error: one line that names what is wrong and where."""

import sys


class FedMTLError(Exception):
    """A user-facing error. `simulate` prints its message as one line and exits 2."""


class ConfigError(FedMTLError):
    """A config key has a value outside what it allows."""


class DataError(FedMTLError):
    """An input file is malformed: the message names the file, line or column."""


class DivergedError(FedMTLError):
    """Training produced non-finite weights (a learning rate too high for the data)."""


class PrivacyRefused(FedMTLError):
    """A client refuses a request below its own privacy floor (privacy_floor.py); its
    message starts with "fedmtl refused:", which the server counts as `failed_by: refused`."""


def print_error(e: BaseException | str) -> int:
    """Print a command's error as its one line (`fedmtl: error: ...` on stderr) and return
    the exit status every fedmtl command uses for it, 2."""
    print(f"fedmtl: error: {e}", file=sys.stderr)
    return 2
