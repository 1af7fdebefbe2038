"""One base for the errors Forewarn explains in words instead of a traceback.

A refusal (a configuration file, a history, a model artifact, a state record that cannot be
used) says what is wrong and where; the CLI prints it and exits with the error's code, in one
place (``forewarn/cli/main.py``): 2 for what a person must fix in a file or an argument,
1 for what the environment must fix (Kafka unreachable), 3 for a fenced worker.
"""

from __future__ import annotations


class ForewarnError(Exception):
    """An error with a message for people and the exit code ``forewarn`` ends with."""

    exit_code = 2
    #: printed before the message (e.g. ``refused configuration:`` and a new line)
    headline = ""
