"""TargetError: why a rollout command's target (rollout/targets.py: a repository, or a server through
admin_client.py) refused it.

Contract: the message is one line that says why (the server's status and message, or what is missing from the
repository), and the command line prints it as is. A module of its own, with no imports, so that the admin
client raises it without loading the repository's schemas.
"""

from __future__ import annotations


class TargetError(RuntimeError):
    """A command the target refused; the message says why (the server's status message)."""
