"""The `adrank` command line: serve a repository, embed ad texts."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click
import numpy as np

from adrank import __version__

# The bundled model repository, for commands run from the top of the checkout (as `make serve` does).
# Relative on purpose: the installed package lives in site-packages, far from any checkout.
BUNDLED_REPOSITORY = Path("models")

repository_option = click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=BUNDLED_REPOSITORY,
    show_default=True,
    help="Model repository: <name>/config.yaml and <name>/<version>/model.onnx.",
)


@click.group()
@click.version_option(__version__, prog_name="adrank")
def main() -> None:
    """adrank: online inference server for ads ranking."""


@main.command()
@repository_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address both ports bind.")
@click.option("--grpc-port", default=8500, show_default=True, type=int, help="gRPC port (0: any free port).")
@click.option("--http-port", default=8000, show_default=True, type=int, help="HTTP port for /healthz, /readyz.")
@click.option("--workers", default=0, show_default=True, type=int, help="Core worker threads (0: one per core).")
@click.option("--drain-grace", default=30.0, show_default=True, type=float, help="Seconds in-flight calls get.")
@click.option(
    "--frontend",
    type=click.Choice(["auto", "cpp", "python"]),
    default="auto",
    show_default=True,
    help="gRPC front end: the core's C++ one (auto, when built with grpc++) or Python's grpc.aio.",
)
def serve(
    repository: Path, host: str, grpc_port: int, http_port: int, workers: int, drain_grace: float, frontend: str
) -> None:
    """Serve the models of a repository over gRPC until SIGTERM, then drain."""
    from adrank.repository import ModelRepository
    from adrank.server import Server, ServerOptions
    from adrank.server import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not ModelRepository(repository).model_names():
        click.echo(f"adrank: no models yet in {repository}: nothing to serve.")
        return
    options = ServerOptions(
        repository=repository,
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        workers=workers,
        drain_grace_s=drain_grace,
        frontend=frontend,  # type: ignore[arg-type]  # click.Choice guarantees the literal
    )

    def announce(server: Server) -> None:
        names = ", ".join(f"{s.name} v{s.version}" for s in server.models.servables())
        click.echo(
            f"adrank: SERVING {names} on grpc {host}:{server.grpc_port}, http {host}:{server.http_port} "
            f"({server.frontend.kind} front end)",
            err=True,
        )

    sys.exit(asyncio.run(run_server(options, on_ready=announce)))


@main.command()
@repository_option
@click.option("--model", default="relevance", show_default=True, help="A model with one text input.")
@click.option("--version", "version", default=0, type=int, help="Version (0: the latest).")
@click.option("--output", "output_name", default="query_embedding", show_default=True, help="Graph output to keep.")
@click.argument("texts", type=click.File("r"))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .npy to write.")
def embed(repository: Path, model: str, version: int, output_name: str, texts: click.File, out: Path) -> None:
    """Embed ad texts (one per line of TEXTS, '-' for stdin) into a float32 [n, dim] .npy file."""
    from adrank.embed import TextEmbedder
    from adrank.repository import ModelRepository

    entry = ModelRepository(repository).entry(model)
    if not entry.versions:
        raise click.ClickException(f"model '{model}' has no version in {entry.path}")
    chosen = version or entry.versions[-1]
    if chosen not in entry.versions:
        raise click.ClickException(f"model '{model}' has no version {chosen} (has {list(entry.versions)})")
    lines = [line.rstrip("\n") for line in texts if line.strip()]
    embeddings = TextEmbedder(entry.version_dir(chosen), entry.config, output_name).embed(lines)
    np.save(out, embeddings)
    click.echo(f"adrank: {len(lines)} texts -> {out} float32 {list(embeddings.shape)} ({model} v{chosen})")
