"""The one exception type that users see as a one-line message."""


class InputError(ValueError):
    """Bad input: the message says what is wrong and what to do."""
