"""The admin token: where `adrank serve` and the admin commands (`adrank models/rollout/... --server`) read it.

Contract: a token comes from a file only its owner can read (no group or other permission bits: mode 0600 or
0400), or else from $ADRANK_ADMIN_TOKEN; never from a command line, where every user of the machine reads it
(`ps`, /proc/PID/cmdline). A file others can read, an empty file or one that cannot be read is refused with a
TokenError whose one-line message names the file and the fix. The server and its clients use this one check,
so a file one accepts the other accepts too; a client's TLS private key (client_tls.py) is held to the same
mode check, `readable_by_others`, so that the two never disagree on what "private" means.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

TOKEN_ENV = "ADRANK_ADMIN_TOKEN"


class TokenError(ValueError):
    """A token file refused; the message names the file and what to do."""


def readable_by_others(path: Path) -> str | None:
    """The one-line refusal of a secret file whose mode gives its group or others any permission (read, or write:
    a file others may rewrite is not the owner's secret either), naming the file, its mode and the fix; None when
    only its owner has access. OSError when it cannot be stat'ed."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return f"{path} is readable by others (mode {mode:04o}): chmod 600 it, so that only its owner reads it"
    return None


def read_token_file(path: Path) -> str:
    """The token in `path` (surrounding whitespace stripped), once its mode shows only its owner reads it."""
    try:
        refusal = readable_by_others(path)
        if refusal is not None:
            raise TokenError(refusal)
        token = path.read_text().strip()
    except OSError as error:
        raise TokenError(f"{path}: cannot read it: {error.strerror}") from error
    if not token:
        raise TokenError(f"{path} is empty")
    return token


def token_from_environment() -> str | None:
    """$ADRANK_ADMIN_TOKEN, or None when unset or empty."""
    return os.environ.get(TOKEN_ENV) or None
