"""The client's errors, each with the exit status it ends the command with.

CliError            exit 1: anything that went wrong, with a one-line message
+-- LoginNeeded     exit 1: no usable session; the message says to run ``vault login``
+-- IntegrityFailure exit 3: a SHA-256 that does not match what the other side reported
UsageError          exit 2: a bad command line (argparse uses 2 as well)
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report in one line on stderr."""

    exit_code = EXIT_ERROR


class LoginNeeded(CliError):
    """No session, or one the server ended: the user has to log in (again)."""


class IntegrityFailure(CliError):
    """Bytes whose SHA-256 differs from the digest the server reported."""

    exit_code = EXIT_INTEGRITY


class UsageError(CliError):
    """A command line that makes no sense."""

    exit_code = EXIT_USAGE
