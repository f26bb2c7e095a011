"""Errors that the command line reports as one clear message instead of a traceback."""


class CrackopsError(Exception):
    """Base class: the CLI prints ``str(error)`` and exits with status 2."""


class ParamsError(CrackopsError):
    """A parameter file or ``-S`` override is invalid; the message names the key."""


class DatasetError(CrackopsError):
    """A dataset folder is unusable; the message lists every file at fault."""


class CheckpointError(CrackopsError):
    """A model checkpoint is missing or does not fit the architecture."""
