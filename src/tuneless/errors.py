"""One exception type so the CLI can turn every user mistake into a one-line message."""


class TunelessError(Exception):
    """A problem with the user's input (model, file, option); the message names it."""


class UnsupportedModelError(TunelessError):
    """The model has nothing tuneless can safely reduce."""
