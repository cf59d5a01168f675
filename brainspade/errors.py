"""The one exception type whose message is shown to a user as is."""


class BrainspadeError(Exception):
    """A problem the user can fix: the message names the file and the fix, on one line.

    The CLI prints it without a traceback and exits non-zero. Raise it for bad input,
    never for programming errors (those should keep their traceback).
    """
