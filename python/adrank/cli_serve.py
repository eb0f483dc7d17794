"""`adrank serve`: the server's command line (server/process.py ServerOptions from its options).

Contract: every option is checked when parsed (exit 2, one `Error:` line: a port out of range, a host that is
not one, a token file others can read, a tenants file that does not validate, a TLS certificate without its
key); what only the start can find (a
port another process holds, a repository that cannot be read, nothing to serve, certificate files that cannot
be served) is one `Error:` line and exit 1. On success it prints one SERVING line (stderr) naming the
addresses, and exits 0 once SIGTERM or SIGINT has drained it. Loaded only when `serve` is named (cli.py
LAZY_COMMANDS).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from adrank.admin_token import TOKEN_ENV, token_from_environment
from adrank.cli_options import (
    audit_log_option,
    host_address,
    model_names,
    refused_on_command_line,
    repository_option,
    token_file,
)
from adrank.log_format import LOG_FORMATS, LOG_LEVELS, JsonFormatter, LogOptions, configure_logging

if TYPE_CHECKING:
    from adrank.server.tls import TlsFiles
    from adrank.tenants import TenantsConfig

PORT = click.IntRange(0, 65535)
# The option that sets each of the server's ports (server/ports.py PortName), for the error when one is taken.
PORT_OPTIONS = {"grpc": "--grpc-port", "http": "--http-port", "admin": "--admin-port"}
TLS_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


def tenants_option(ctx: click.Context, param: click.Parameter, value: Path | None) -> TenantsConfig | None:
    """The tenants file, read and validated when parsed (exit 2 naming the file and the field)."""
    if value is None:
        return None
    from adrank.tenants import TenantsConfigError, load_tenants

    try:
        return load_tenants(value)
    except TenantsConfigError as error:
        raise click.BadParameter(str(error)) from error


def tls_files(prefix: str, cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsFiles | None:
    """One port's TLS files from its options; a usage error (exit 2) for a certificate without its key, or the
    reverse, or a client CA without both."""
    if cert is None and key is None:
        if client_ca is not None:
            raise click.UsageError(f"{prefix}-client-ca needs {prefix}-cert and {prefix}-key")
        return None
    if cert is None or key is None:
        given, missing = (
            (f"{prefix}-cert", f"{prefix}-key") if cert is not None else (f"{prefix}-key", f"{prefix}-cert")
        )
        raise click.UsageError(f"{given} needs {missing}")
    from adrank.server.tls import TlsFiles

    return TlsFiles(cert, key, client_ca)


@click.command("serve")
@repository_option
@audit_log_option
@click.option(
    "--host", default="127.0.0.1", show_default=True, callback=host_address, help="Address the gRPC port binds."
)
@click.option(
    "--http-host",
    default="127.0.0.1",
    show_default=True,
    callback=host_address,
    help="Address the HTTP port (metrics, /v2) binds.",
)
@click.option(
    "--admin-host", default="127.0.0.1", show_default=True, callback=host_address, help="Address the admin port binds."
)
@click.option("--grpc-port", default=8500, show_default=True, type=PORT, help="gRPC port (0: any free port).")
@click.option(
    "--http-port",
    default=8000,
    show_default=True,
    type=PORT,
    help="HTTP port: /healthz, /readyz, /metrics (Prometheus), /dashboard.",
)
@click.option(
    "--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Core worker threads (0: one per core)."
)
@click.option(
    "--drain-grace", default=30.0, show_default=True, type=click.FloatRange(min=0), help="Seconds in-flight calls get."
)
@click.option(
    "--max-concurrent-streams",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Calls at once on one client connection (more wait on the client's side).",
)
@click.option(
    "--max-in-flight-mib",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Request MiB held by calls not yet done, all clients together (beyond: RESOURCE_EXHAUSTED).",
)
@click.option(
    "--keepalive",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Seconds between pings on a connection; one unanswered for --keepalive-timeout is closed.",
)
@click.option(
    "--keepalive-timeout",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Seconds a client has to answer a ping before its connection is closed and its calls cancelled.",
)
@click.option(
    "--yield-to-workers/--no-yield-to-workers",
    default=True,
    show_default=True,
    help="The C++ front end's threads run SCHED_BATCH: they wait for a model batch instead of preempting it.",
)
@click.option(
    "--reply-margin-ms",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Each call's deadline less this is what the models get: the reply still has to reach the caller.",
)
@click.option(
    "--frontend",
    type=click.Choice(["auto", "cpp", "python"]),
    default="auto",
    show_default=True,
    help="gRPC front end: the core's C++ one (auto, when built with grpc++) or Python's grpc.aio.",
)
@click.option("--admin-port", default=8501, show_default=True, type=PORT, help="Admin gRPC port (with a token).")
@click.option(
    "--admin-token",
    "admin_token_on_command_line",  # a name apart from --admin-token-file's value, which is the token itself
    default=None,
    hidden=True,
    expose_value=False,
    callback=refused_on_command_line("--admin-token-file"),
    help="Refused: a token on the command line is in the process list (use --admin-token-file).",
)
@click.option(
    "--admin-token-file",
    "admin_token",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    callback=token_file,
    help=f"A file (mode 0600) holding the Bearer token the admin service requires; or ${TOKEN_ENV}. Else: no admin"
    " service.",
)
@click.option(
    "--poll-interval", default=2.0, show_default=True, type=click.FloatRange(min=0), help="Repository poll, s (0: off)."
)
@click.option(
    "--metrics/--no-metrics",
    default=True,
    show_default=True,
    help="Per-version counting in the core, /metrics and /dashboard.",
)
@click.option(
    "--tenants",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    callback=tenants_option,
    default=None,
    help="YAML of the callers' (x-adrank-tenant) weights, limits and priority classes (else: the defaults).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default="info",
    show_default=True,
    help="Least severe log records written (stderr).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="text, or json: one object per line (time, level, logger, message; model, version where there is one).",
)
@click.option("--tls-cert", type=TLS_FILE, default=None, help="PEM certificate chain: the gRPC port serves TLS only.")
@click.option("--tls-key", type=TLS_FILE, default=None, help="PEM private key of --tls-cert (unencrypted).")
@click.option(
    "--tls-client-ca",
    type=TLS_FILE,
    default=None,
    help="PEM CA bundle: mutual TLS, clients must present a certificate it signed.",
)
@click.option(
    "--admin-tls-cert", type=TLS_FILE, default=None, help="The admin port's certificate [default: --tls-cert's]."
)
@click.option("--admin-tls-key", type=TLS_FILE, default=None, help="The key of --admin-tls-cert.")
@click.option("--admin-tls-client-ca", type=TLS_FILE, default=None, help="Mutual TLS on the admin port.")
@click.option("--http-tls-cert", type=TLS_FILE, default=None, help="PEM certificate chain: the HTTP port serves HTTPS.")
@click.option("--http-tls-key", type=TLS_FILE, default=None, help="The key of --http-tls-cert.")
def serve(
    repository: Path,
    audit_log: str | None,
    host: str,
    http_host: str,
    admin_host: str,
    grpc_port: int,
    http_port: int,
    workers: int,
    drain_grace: float,
    max_concurrent_streams: int,
    max_in_flight_mib: int,
    keepalive: float,
    keepalive_timeout: float,
    yield_to_workers: bool,
    reply_margin_ms: float,
    frontend: str,
    admin_port: int,
    admin_token: str | None,
    poll_interval: float,
    metrics: bool,
    tenants: TenantsConfig | None,
    log_level: str,
    log_format: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    admin_tls_cert: Path | None,
    admin_tls_key: Path | None,
    admin_tls_client_ca: Path | None,
    http_tls_cert: Path | None,
    http_tls_key: Path | None,
) -> None:
    """Serve the models of a repository over gRPC until SIGTERM, then drain.

    Exits 1 when the repository cannot be read, none of its models has a version that loads (a model
    with nothing to serve while others serve leaves the server running, not ready), or a port cannot be
    bound (another process holds it: never shared, server/ports.py).

    Serving never writes into the repository, which may be read-only or shared: each model's rollout
    audit log goes where --audit-log says (by default outside the repository). Only a rollout change
    through the admin API, or a guardrail rollback, writes the model's rollout.yaml.

    TLS: --tls-cert and --tls-key serve the gRPC port (and the admin port, unless --admin-tls-* say otherwise)
    over TLS only; --tls-client-ca makes it mutual. --http-tls-cert and --http-tls-key serve HTTPS. Replacing
    the files takes effect for new connections within two seconds, without a restart; files that fail their checks
    are refused and the old certificate kept (logged, adrank_tls_reloads_total{result="refused"})."""
    import asyncio

    from adrank.lifecycle.manager import ManagerOptions, NothingToServe
    from adrank.metrics.history import MetricsOptions
    from adrank.server.frontend import TransportOptions
    from adrank.server.ports import PortUnavailable
    from adrank.server.process import Server, ServerOptions
    from adrank.server.process import serve as run_server
    from adrank.server.tls import TlsError
    from adrank.tenants import TenantsConfig

    log_options = LogOptions(level=log_level, format=log_format)  # type: ignore[arg-type]  # click.Choice's
    if not model_names(repository):
        click.echo(f"adrank: no models yet in {repository}: nothing to serve.")
        return
    tls = tls_files("--tls", tls_cert, tls_key, tls_client_ca)
    admin_tls = tls_files("--admin-tls", admin_tls_cert, admin_tls_key, admin_tls_client_ca)
    http_tls = tls_files("--http-tls", http_tls_cert, http_tls_key, None)
    configure_logging(log_options)
    options = ServerOptions(
        repository=repository,
        transport=TransportOptions(
            host=host,
            port=grpc_port,
            max_concurrent_streams=max_concurrent_streams,
            max_in_flight_bytes=max_in_flight_mib << 20,
            keepalive_time_s=keepalive,
            keepalive_timeout_s=keepalive_timeout,
            yield_to_workers=yield_to_workers,
            reply_margin_s=reply_margin_ms / 1000,
        ),
        http_host=http_host,
        http_port=http_port,
        admin_host=admin_host,
        workers=workers,
        drain_grace_s=drain_grace,
        frontend=frontend,  # type: ignore[arg-type]  # click.Choice guarantees the literal
        models=ManagerOptions(poll_interval_s=poll_interval, tenants=tenants or TenantsConfig(), audit_log=audit_log),
        admin_port=admin_port,
        admin_token=admin_token or token_from_environment(),
        metrics=MetricsOptions(enabled=metrics),
        tls=tls,
        admin_tls=admin_tls,
        http_tls=http_tls,
    )

    def announce(server: Server) -> None:
        names = ", ".join(f"{s.name} v{s.version}" for s in server.models.servables())
        line = (
            f"adrank: SERVING {names} on grpc {host}:{server.grpc_port}, http {http_host}:{server.http_port} "
            f"({server.frontend.kind} front end"
            + (f", admin {admin_host}:{server.admin.port}" if server.admin else "")
            + ")"
        )
        click.echo(_as_log_line(line) if log_options.format == "json" else line, err=True)

    try:
        status = asyncio.run(run_server(options, on_ready=announce))
    except PortUnavailable as error:
        raise click.ClickException(f"{PORT_OPTIONS[error.name]}: {error.address} {error.reason}") from error
    except (NothingToServe, TlsError, OSError) as error:  # OSError: the repository gone meanwhile
        raise click.ClickException(str(error)) from error
    sys.exit(status)


def _as_log_line(line: str) -> str:
    """The SERVING line in the JSON log's form, so that every line of a JSON log parses; written whatever the
    log level, as it is the command's answer (the addresses it serves on), not a log record."""
    return JsonFormatter().format(logging.makeLogRecord({"name": "adrank.cli", "levelname": "INFO", "msg": line}))
