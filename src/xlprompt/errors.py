"""One exception type for every user-facing mistake: the CLI prints its message, never a traceback."""


class XlpromptError(Exception):
    """Bad input or a missing resource; the message says what to do next."""
