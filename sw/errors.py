"""The CLI's two kinds of expected failure (a module of their own, so `python -m sw.cli` and
the subcommands that import them share one class each)."""


class UsageError(Exception):
    """Arguments that parse but make no sense together: usage error, exit 2."""


class CommandError(Exception):
    """A clear, expected failure (missing tool, bad file): message, exit 1."""
