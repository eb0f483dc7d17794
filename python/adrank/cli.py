"""The `adrank` command line."""

from __future__ import annotations

from pathlib import Path

import click

from adrank import __version__

# The bundled model repository: models/ at the top of the source tree.
BUNDLED_REPOSITORY = Path(__file__).resolve().parents[2] / "models"


def find_models(repository: Path) -> list[str]:
    """Names of the models in a repository: the folders that hold a config.yaml."""
    if not repository.is_dir():
        return []
    return sorted(p.name for p in repository.iterdir() if (p / "config.yaml").is_file())


@click.group()
@click.version_option(__version__, prog_name="adrank")
def main() -> None:
    """adrank: online inference server for ads ranking."""


@main.command()
@click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=BUNDLED_REPOSITORY,
    show_default=True,
    help="Model repository: <name>/config.yaml and <name>/<version>/model.onnx.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--grpc-port", default=8500, show_default=True, type=int)
@click.option("--http-port", default=8000, show_default=True, type=int)
def serve(repository: Path, host: str, grpc_port: int, http_port: int) -> None:
    """Serve the models of a repository over gRPC."""
    models = find_models(repository)
    if not models:
        click.echo(f"adrank: no models yet in {repository}: nothing to serve.")
        return
    raise click.ClickException(
        f"found models {', '.join(models)} in {repository}, but this build has no gRPC front end yet "
        "(it arrives with the serving issue)"
    )
