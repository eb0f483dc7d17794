"""The checks the `adrank` commands run on their options while click parses them (callbacks), shared by cli.py
and cli_publish.py.

Contract: a value that cannot be right is refused before the command does anything — click's usage error,
exit status 2, its last line `Error: Invalid value for '--option': <what is wrong>` — so a caller's mistake
never reaches the command's body as a traceback or a validation dump. What only the repository or a server
can decide (a model that is not there, a version the server lacks) is the command's own one-line error (exit 1).
Only the standard library and click at import time: the admin commands must start fast.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import click

from adrank.admin_token import TOKEN_ENV, TokenError, read_token_file
from adrank.client_tls import ClientTls, ClientTlsError

Callback = Callable[[click.Context, click.Parameter, object], object]


def model_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A model name (repository/config.py: letters, digits, `_`, `.`, `-`): never a path."""
    if value is None:
        return None
    from adrank.repository.config import ModelNameError, check_model_name

    try:
        return check_model_name(value)
    except ModelNameError as error:
        raise click.BadParameter(str(error)) from error


def server_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """HOST:PORT (an IPv6 host in brackets, [::1]:8501), the port 1-65535."""
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT (the server's --admin-port, default 8501), got {value!r}")
    return value


def host_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An address a port can bind: an IP address or a name that resolves (checked before any model loads, and
    named by its own option, not by the port that would have failed to bind on it)."""
    try:
        socket.getaddrinfo(value, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise click.BadParameter(
            f"{value!r} cannot be resolved: {getattr(error, 'strerror', None) or error}"
        ) from error
    return value


def token_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> str | None:
    """The token in the file (admin_token.py: only its owner may read it), read when parsed."""
    if value is None:
        return None
    try:
        return read_token_file(value)
    except TokenError as error:
        raise click.BadParameter(str(error)) from error


def refused_on_command_line(file_option: str) -> Callback:
    """A callback that refuses any value: a token on the command line is in the process list (ps)."""

    def refuse(ctx: click.Context, param: click.Parameter, value: object) -> None:
        if value is not None:
            raise click.UsageError(
                f"{param.opts[0]} puts the token in the process list: give it in a file ({file_option}, mode 0600)"
                f" or in ${TOKEN_ENV}"
            )

    return refuse


def client_tls(
    server: str | None, ca: Path | None, cert: Path | None, key: Path | None, server_name: str | None
) -> ClientTls | None:
    """The --tls-ca/--tls-cert/--tls-key/--tls-server-name options together (any of them: TLS; none: plaintext),
    checked once all are parsed, before the command does anything: they need --server, --tls-cert and --tls-key
    go together, and the files are read now (PEM; a key others can read is refused as a token file is). A
    mistake is click's usage error (exit 2), one line naming the option or the file."""
    if ca is None and cert is None and key is None and server_name is None:
        return None
    if server is None:
        raise click.UsageError("--tls-ca, --tls-cert, --tls-key and --tls-server-name are for --server HOST:PORT")
    if server_name is not None and not server_name.strip():
        raise click.UsageError("--tls-server-name is empty: give the name the server's certificate carries")
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together (the client certificate and its private key)")
    try:
        tls = ClientTls(root_ca=ca, cert=cert, key=key, server_name=server_name)
        tls.read()
    except ClientTlsError as error:
        raise click.UsageError(str(error)) from error
    return tls


def audit_log_place(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """'repository', or a directory that is there or can be made (no file where it or a folder above it would
    be): checked when parsed, since the log is first written after the command or the server has acted."""
    if value is None or value == "repository":
        return value
    if not value:
        raise click.BadParameter("give a directory, or 'repository'")
    path = Path(value)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise click.BadParameter(f"{existing} is not a directory")
    return value


# The same option, and the same default, for the server and the rollout commands: both append to one log.
audit_log_option = click.option(
    "--audit-log",
    default=None,
    callback=audit_log_place,
    metavar="DIR|repository",
    help="Where each model's rollout audit log is kept: DIR/<model>.jsonl; 'repository' for"
    " <repository>/<model>/rollout_history.jsonl (writes into the repository); default"
    " $XDG_STATE_HOME/adrank/audit/<repository name>-<hash of its path>/ (~/.local/state without"
    " XDG_STATE_HOME), outside the repository, so a read-only repository serves.",
)


# The bundled model repository, for commands run from the top of the checkout (as `make serve` does).
# Relative on purpose: the installed package lives in site-packages, far from any checkout.
BUNDLED_REPOSITORY = Path("models")


def model_names(repository: Path) -> list[str]:
    """The repository's models; a one-line error if it cannot be read."""
    from adrank.repository.layout import ModelRepository, RepositoryError

    try:
        return ModelRepository(repository).model_names()
    except RepositoryError as error:
        raise click.ClickException(str(error)) from error


VERSION = click.IntRange(min=1)
# Of the routing keys or of the requests: rollout/policy.py's bounds, checked here so that a mistake is one line.
PERCENT = click.FloatRange(0, 100)
repository_option = click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=BUNDLED_REPOSITORY,
    show_default=True,
    help="Model repository: <name>/config.yaml and <name>/<version>/model.onnx.",
)
