"""The project's one user-error type: raised where an input is checked, printed as one line without a traceback.

Everything else (a bug here or in torch, a ValueError from deep inside a library) keeps its traceback.
"""


class UserError(Exception):
    """A bad input or environment; the message says what is wrong and what to do."""
