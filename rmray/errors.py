"""The one exception the command line turns into ``rmray: error: ...`` and exit code 2."""


class UsageError(ValueError):
    """A mistake the user can fix (a path, a port, a setting): the message says what and how, in one line.

    Raised before Ray starts wherever the check can be made there, so it costs seconds, not a start-up."""
