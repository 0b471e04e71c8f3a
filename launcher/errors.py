"""The one error type the launcher reports as a usage problem (exit code 2, no traceback)."""


class LaunchError(ValueError):
    """Bad input to the launcher: a cluster file, a rank table, an option, a busy port.

    The message names what was wrong (file, key, server, device) and how to fix it.
    """
