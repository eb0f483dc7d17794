"""The `adrank` command line: serve a repository; publish a model version; list models and change
their rollout (on a running server through its admin API, or in the repository); embed ad texts.

Every command exits 0 when it did what it was asked. A caller's mistake is one `Error: ...` line, never a
traceback or a validation dump: exit 2 for an option or argument refused while click parses it (out of
range, not a model name, a missing file, a token file others can read: cli_options.py), exit 1 for what
only the repository or a server can refuse (a repository that cannot be read, an unknown model or version,
a server that is not there or is not an admin port). tests/python/test_cli_errors.py runs every command so.
The admin token comes from a file only its owner reads or from $ADRANK_ADMIN_TOKEN (admin_token.py), never
from the command line. With --server, the --tls-* options make the admin connection TLS (client_tls.py), checked
when parsed as a token file is.
"""

from __future__ import annotations

import functools
import getpass
import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from adrank import __version__
from adrank.admin_token import TOKEN_ENV, token_from_environment
from adrank.cli_options import (
    PERCENT,
    VERSION,
    audit_log_option,
    client_tls,
    model_name,
    model_names,
    refused_on_command_line,
    repository_option,
    server_address,
    token_file,
)
from adrank.client_tls import ClientTls

# Heavy modules (numpy, onnx, ONNX Runtime, grpc, pydantic, rich, the core) are imported inside the commands
# that use them: each command pays only for its own, so that the admin commands start in a fraction of a
# second (tests/python/test_cli_startup.py holds `adrank models --server` to 0.5 s of CPU).

# The commands loaded only when named, as "module:attribute".
LAZY_COMMANDS = {"publish": "adrank.cli_publish:publish_command", "serve": "adrank.cli_serve:serve"}


class Commands(click.Group):
    """A click group some of whose commands are loaded only when named: `publish` imports onnx, ONNX Runtime
    and the core at its module's top (seconds), which no other command should pay for; `serve` has the most
    options of all and lives in its own module (cli_serve.py)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=Commands)
@click.version_option(__version__, prog_name="adrank")
def main() -> None:
    """adrank: online inference server for ads ranking."""


def text_lines(ctx: click.Context, param: click.Parameter, texts: TextIO) -> list[str]:
    """The file's non-blank lines, read when parsed: a file that is not UTF-8 text is the argument's mistake."""
    try:
        return [line.rstrip("\n") for line in texts if line.strip()]
    except UnicodeDecodeError as error:
        raise click.BadParameter(f"{texts.name} is not UTF-8 text ({error.reason})") from error


@main.command()
@repository_option
@click.option(
    "--model", default="relevance", show_default=True, callback=model_name, help="A model with one text input."
)
@click.option("--version", "version", default=0, type=click.IntRange(min=0), help="Version (0: the latest).")
@click.option("--output", "output_name", default="query_embedding", show_default=True, help="Graph output to keep.")
@click.argument("texts", type=click.File("r", encoding="utf-8"), callback=text_lines)
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .npy to write.")
def embed(repository: Path, model: str, version: int, output_name: str, texts: list[str], out: Path) -> None:
    """Embed ad texts (one per line of TEXTS, '-' for stdin) into a float32 [n, dim] .npy file.

    Exits 1 with one line when the model has no such version, is not a text model (one text input) or has no
    such output, or the file cannot be written."""
    import numpy as np

    from adrank.backends import BackendError
    from adrank.embed import TextEmbedder
    from adrank.repository import ConfigError, ModelRepository

    if model not in model_names(repository):
        raise click.ClickException(f"no model '{model}' in {repository}")
    try:
        entry = ModelRepository(repository).entry(model)
    except (ConfigError, OSError) as error:
        raise click.ClickException(str(error)) from error
    if not entry.versions:
        raise click.ClickException(f"model '{model}' has no version in {entry.path}")
    chosen = version or entry.versions[-1]
    if chosen not in entry.versions:
        raise click.ClickException(f"model '{model}' has no version {chosen} (has {list(entry.versions)})")
    try:
        embeddings = TextEmbedder(entry.version_dir(chosen), entry.config, output_name).embed(texts)
        np.save(out, embeddings)
    except (BackendError, OSError) as error:  # not a text model, no such output, a session that fails, -o
        # One line: a backend's error may carry ONNX Runtime's multi-line message.
        raise click.ClickException(" ".join(str(error).split())) from error
    click.echo(f"adrank: {len(texts)} texts -> {out} float32 {list(embeddings.shape)} ({model} v{chosen})")


# ---- rollout: models, rollout, promote, rollback --------------------------------------------------


@dataclass(frozen=True)
class Where:
    """Where a rollout command acts: a running server (--server, admin API with a token) or the
    repository's files; and whether it answers in JSON."""

    repository: Path
    server: str | None
    token: str | None  # from --token-file, already read and checked (cli_options.token_file)
    as_json: bool
    audit_log: str | None = None  # --audit-log: for the repository's files (a server keeps its own)
    tls: ClientTls | None = None  # --tls-*: for --server, already checked and its files read (cli_options.client_tls)

    def target(self) -> Any:
        if self.server is None:
            from adrank.rollout.audit_location import AuditLocation
            from adrank.rollout.targets import RepositoryTarget

            model_names(self.repository)  # a one-line error if it cannot be read
            return RepositoryTarget(self.repository, AuditLocation.from_option(self.audit_log, self.repository))
        token = self.token or token_from_environment()
        if not token:
            raise click.ClickException(f"--server needs the admin token: --token-file F (mode 0600) or ${TOKEN_ENV}")
        from adrank.admin_client import ServerTarget

        return ServerTarget(self.server, token, tls=self.tls)

    def describe(self) -> str:
        return f"server {self.server}" if self.server else f"{self.repository} (servers apply it at their next poll)"


def target_options(command: Any) -> Any:
    """Adds the options that say where a rollout command acts; the command receives them as `where`."""

    @functools.wraps(command)
    def with_where(
        *args: Any,
        repository: Path,
        server: str | None,
        token: str | None,
        as_json: bool,
        audit_log: str | None,
        tls_ca: Path | None,
        tls_cert: Path | None,
        tls_key: Path | None,
        tls_server_name: str | None,
        **kwargs: Any,
    ) -> Any:
        tls = client_tls(server, tls_ca, tls_cert, tls_key, tls_server_name)
        return command(*args, where=Where(repository, server, token, as_json, audit_log, tls), **kwargs)

    pem_file = click.Path(dir_okay=False, exists=True, path_type=Path)

    options = [
        repository_option,
        audit_log_option,
        click.option(
            "--server",
            default=None,
            callback=server_address,
            help="A running server's admin address HOST:PORT (its --admin-port, default 8501; else: the repository).",
        ),
        click.option(
            "--token",
            "token_on_command_line",  # a name apart from --token-file's value, which is the token itself
            default=None,
            hidden=True,
            expose_value=False,
            callback=refused_on_command_line("--token-file"),
            help="Refused: a token on the command line is in the process list (use --token-file).",
        ),
        click.option(
            "--token-file",
            "token",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            default=None,
            callback=token_file,
            help=f"A file (mode 0600: only its owner reads it) holding the server's admin token, for --server; or"
            f" ${TOKEN_ENV}.",
        ),
        # Any of the --tls-* options makes --server's connection TLS (the server's --tls-cert); none: plaintext.
        click.option(
            "--tls-ca",
            type=pem_file,
            default=None,
            help="With --server: TLS, trusting the CA (PEM) that signed the server's certificate (default: the"
            " system's roots).",
        ),
        click.option(
            "--tls-cert",
            type=pem_file,
            default=None,
            help="With --server: this client's certificate (PEM), for a server that asks for one (mTLS); with"
            " --tls-key.",
        ),
        click.option(
            "--tls-key",
            type=pem_file,
            default=None,
            help="With --server: the private key (PEM, mode 0600: only its owner reads it) of --tls-cert.",
        ),
        click.option(
            "--tls-server-name",
            default=None,
            metavar="NAME",
            help="With --server: TLS, checking the server's certificate for NAME (default: --server's host).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for option in reversed(options):
        with_where = option(with_where)
    return with_where


def _emit(as_json: bool, data: Any, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


@main.command()
@target_options
@click.option("--history", is_flag=True, help="Show each model's rollout audit log.")
@click.argument("name", required=False, callback=model_name)
def models(where: Where, history: bool, name: str | None) -> None:
    """List models, their versions with state and role, and their rollout.

    From the repository (no --server), a version's state is ON DISK: what is on disk, not what a server made of
    it (a server may have FAILED it); --server HOST:PORT shows a running server's states (LOADING, AVAILABLE,
    FAILED...). A version whose meta.json records int8 nodes that saturate on CPUs without VNNI (published with
    `adrank publish --allow-int8-saturation`) shows it in an "integer kernels" column.
    """
    from rich.console import Console
    from rich.table import Table

    from adrank.rollout.summary import summary
    from adrank.rollout.target_error import TargetError

    target = where.target()
    try:
        listed = [m for m in target.models() if name is None or m["model"] == name]
        if name is not None and not listed:
            raise click.ClickException(f"no model '{name}'")
        if history:
            for m in listed:
                m["history"] = [asdict(e) for e in target.history(m["model"])]
    except TargetError as error:
        raise click.ClickException(str(error)) from error
    if where.as_json:
        _emit(True, listed, "")
        return
    console = Console()
    if where.server is None:
        # Said once, first: ON DISK is not AVAILABLE, and a reader must not take one for the other.
        click.echo(
            f"{where.repository}: states are what is on disk, not what a server serves (a server may have FAILED a"
            " version): --server HOST:PORT (its --admin-port) shows a running server's states"
        )
    for m in listed:
        console.print(f"[bold]{m['model']}[/bold]: {summary(m['policy'])}", soft_wrap=True)
        table = Table()
        # The integer kernels column only where a version has a note: most models have none to show.
        notes = any(v["integer_kernels"] for v in m["versions"])
        for column in ("version", "state", "role", "reason", *(("integer kernels",) if notes else ())):
            table.add_column(column)
        for v in m["versions"]:
            note = (v["integer_kernels"],) if notes else ()
            table.add_row(str(v["version"]), v["state"], v["role"], v["reason"], *note)
        console.print(table)
        if m["error"]:
            console.print(f"[red]not applied: {m['error']}[/red]")
        for e in m.get("history", []):
            console.print(_history_line(e), markup=False, highlight=False, soft_wrap=True)


def _history_line(entry: dict[str, Any]) -> str:
    """One audit entry: when, who, what, the policy after it or the route it changed (with its cause), why."""
    from adrank.rollout.summary import route_change_summary, summary

    figures = f" {json.dumps(entry['figures'], sort_keys=True)}" if entry["figures"] else ""
    what = summary(entry["after"]) if entry["after"] else ""
    if entry.get("route"):
        what = f"{what}; " if what else ""
        what += f"route {route_change_summary(entry['route'])} ({entry['cause']})"
    return f"  {entry['time']} {entry['actor']} {entry['action']}: {what} {entry['reason']}{figures}".rstrip()


def _change(where: Where, name: str, change: Any, actor: str | None, reason: str) -> None:
    from adrank.rollout.changes import ChangeError
    from adrank.rollout.target_error import TargetError

    target = where.target()
    try:
        policy, action = change(target)
        applied = target.apply(name, policy, action, actor or getpass.getuser(), reason)
    except (ChangeError, TargetError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    _emit(
        where.as_json,
        {"model": name, "action": action, "policy": applied.model_dump(mode="json")},
        f"adrank: {name}: {action}: {applied.summary()} — on {where.describe()}",
    )


change_options = [
    click.option("--actor", default=None, help="Who makes the change, for the audit log (default: your user)."),
    click.option("--reason", default="", help="Why, for the audit log."),
]


def _with_change_options(command: Any) -> Any:
    for option in reversed(change_options):
        command = option(command)
    return target_options(command)


@main.command()
@_with_change_options
@click.argument("name", callback=model_name)
@click.option("--canary", "canary", type=VERSION, default=None, help="Version to canary.")
@click.option(
    "--percent", type=PERCENT, default=None, help="Share of routing keys the canary takes, 0-100 (0 ends it)."
)
@click.option("--shadow", "shadow", type=VERSION, default=None, help="Version to mirror traffic to.")
@click.option(
    "--sample-percent", type=PERCENT, default=100.0, show_default=True, help="Share of requests mirrored, 0-100."
)
@click.option("--no-shadow", is_flag=True, help="End the shadow.")
def rollout(
    where: Where,
    actor: str | None,
    reason: str,
    name: str,
    canary: int | None,
    percent: float | None,
    shadow: int | None,
    sample_percent: float,
    no_shadow: bool,
) -> None:
    """Start, resize or end a canary (--canary V --percent P) or a shadow (--shadow V, --no-shadow)."""
    from adrank.rollout.changes import set_canary, set_shadow

    if (canary is None) == (shadow is None and not no_shadow):
        raise click.UsageError("give one of --canary V --percent P, --shadow V, --no-shadow")
    if canary is not None and percent is None:
        raise click.UsageError("--canary needs --percent")

    def change(target: Any) -> Any:
        current = target.policy(name)
        stable_now = target.stable_now(name)
        if canary is not None:
            assert percent is not None  # checked above
            return set_canary(current, canary, percent, stable_now)
        return set_shadow(current, None if no_shadow else shadow, sample_percent, stable_now)

    _change(where, name, change, actor, reason)


@main.command()
@_with_change_options
@click.argument("name", callback=model_name)
@click.argument("version", type=VERSION)
def promote(where: Where, actor: str | None, reason: str, name: str, version: int) -> None:
    """Make VERSION the stable version of NAME (ending a canary or shadow of it)."""
    from adrank.rollout.changes import promote as promoted

    _change(where, name, lambda target: promoted(target.policy(name), version), actor, reason)


@main.command()
@_with_change_options
@click.argument("name", callback=model_name)
def rollback(where: Where, actor: str | None, reason: str, name: str) -> None:
    """End NAME's canary and shadow; with neither, return stable to the version the last promote replaced."""
    from adrank.rollout.changes import rollback as rolled_back

    _change(where, name, lambda target: rolled_back(target.policy(name), target.history(name)), actor, reason)
