"""The one error convention of the CLI: a leaf module every area may import.

``UsageError``: bad input from the user (flags, files, config, local state). ``fraudctl`` prints its message
on one line, without a traceback, and exits 2.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""
