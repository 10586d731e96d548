"""The project's own error: one line that names what is wrong and where."""


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
