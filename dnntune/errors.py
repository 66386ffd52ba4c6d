"""The one error type users see.

Every bad input (a file, a config key, a flag, a model) raises :class:`DnntuneError`
with a one-line message naming *what* was wrong and *what was expected*. The CLI
prints that line and exits with code 2; library users can catch it.
"""


class DnntuneError(Exception):
    """A user-facing error: one line, names the offending input and the expectation."""


class ConfigError(DnntuneError):
    """A bad value in a config file, a profile file or a command-line flag."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def describe_error(exc: BaseException) -> str:
    """One line for a user: a DnntuneError's message, or for an operating-system error the
    file it names and what went wrong ("/x/out.json: Permission denied")."""
    if isinstance(exc, OSError) and exc.strerror:
        names = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
        return f"{' -> '.join(names)}: {exc.strerror}" if names else exc.strerror
    return str(exc)
