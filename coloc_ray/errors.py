"""User-facing errors: one clear line, exit code 2, never a traceback (STYLE 7)."""


class UserError(Exception):
    """A mistake in the user's input: what is wrong, where, and how to fix it.

    The CLI prints ``coloc: error: <message>`` and exits with code 2. Raise it before any work
    starts so nothing half-written is left behind.
    """

    exit_code = 2
