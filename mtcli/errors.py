"""Errors that the CLI reports as one `error:` line."""


class MtcliError(Exception):
    """A user-facing failure: bad usage, config or input (exit 2)."""

    exit_code = 2


class RunFailure(MtcliError):
    """A failure that is not the user's input (exit 1), e.g. a diverged run or a full disk."""

    exit_code = 1
