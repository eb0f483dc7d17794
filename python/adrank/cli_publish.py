"""`adrank publish MODEL.onnx --model NAME`: the command line of publish/pipeline.py.

Contract: parses the options into a PublishOptions, runs publish() with its progress on stderr (step lines;
progress bars too on a terminal, unless `--json`), and prints the report on stdout: a table, or with `--json`
the PublishReport as JSON. A refusal (PublishError) is a click error: its message on stderr, exit status 1,
and the repository unchanged. What is checked and how the version is made visible is publish.py's contract.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from adrank.cli_options import audit_log_option, model_name
from adrank.publish.pipeline import (
    DEFAULT_BENCH_REPS,
    DEFAULT_MAX_SLOWDOWN,
    PublishError,
    PublishOptions,
    PublishReport,
    publish,
)

if TYPE_CHECKING:
    from rich.console import Console


class PublishProgress:
    """PublishSteps on a rich console (stderr): step lines and, on a terminal, progress bars for the slow steps.

    No console: silent. Bars only when the console is a terminal, so logs and CI output get the step lines alone.
    """

    def __init__(self, console: Console | None = None, bars: bool = True) -> None:
        self.console = console
        self.bars = bars and console is not None and console.is_terminal

    def step(self, message: str) -> None:
        if self.console is not None:
            # markup off: messages hold brackets ("range [0.0, 1.0]") that are not rich markup.
            self.console.print(f"adrank publish: {message}", markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def bar(self, description: str, total: int | None) -> Iterator[Callable[[], None]]:
        """Yields `advance()`; total None is a spinner (a step with no count)."""
        if not self.bars:
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda: progress.advance(task)


@click.command("publish")
@click.argument("onnx_file", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--model",
    required=True,
    callback=model_name,
    help="The model (a folder of the repository with a config.yaml).",
)
@click.option("--version", type=click.IntRange(min=1), default=None, help="Version number [default: latest + 1].")
@click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("models"),
    show_default=True,
    help="Model repository: <name>/config.yaml and <name>/<version>/model.onnx.",
)
@click.option(
    "--max-slowdown",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_MAX_SLOWDOWN,
    show_default=True,
    help="Refuse if the new version's compute time is above this ratio of the current version's.",
)
@click.option(
    "--bench-reps",
    type=click.IntRange(min=1),
    default=DEFAULT_BENCH_REPS,
    show_default=True,
    help="Runs per batch size and version in the latency comparison.",
)
@click.option("--source", default=None, help="Where the model comes from (training run, commit), kept in meta.json.")
@click.option(
    "--allow-int8-saturation",
    is_flag=True,
    help="Publish even if integer MatMul/Conv nodes multiply 8-bit activations by int8 weights using 8 bits, which "
    "saturate on CPUs without VNNI (AVX2 only) so that scores differ there; recorded in meta.json.",
)
@audit_log_option
@click.option("--actor", default=None, help="Who publishes, for the audit log (default: your user).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def publish_command(
    onnx_file: Path,
    model: str,
    version: int | None,
    repository: Path,
    max_slowdown: float,
    bench_reps: int,
    source: str | None,
    allow_int8_saturation: bool,
    audit_log: str | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Validate MODEL.onnx as a new version of a model and publish it atomically.

    Checks, in order: the ONNX checker; no integer node that saturates on CPUs without VNNI (int8 weights using
    more than 7 bits; --allow-int8-saturation lets them through); the graph against the model's config; golden
    inputs give finite scores in the declared range; latency against the current version (refused above
    --max-slowdown). Nothing is visible in the repository until all pass; a refused or killed publish leaves no
    version behind.

    The new version takes no traffic until `adrank promote` or a canary routes to it: where rollout.yaml names no
    stable version, publish pins it to the current one (audited), unless the model's config.yaml says
    `latest_serves: true`. The last line says what servers will route.
    """
    from rich.console import Console

    options = PublishOptions(
        model,
        onnx_file,
        repository,
        version,
        max_slowdown,
        bench_reps,
        source,
        allow_int8_saturation,
        audit_log=audit_log,
        actor=actor,
    )
    progress = PublishProgress(Console(stderr=True), bars=not as_json)
    try:
        report = publish(options, progress)
    except PublishError as error:
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _echo_report(report)


# Implementation details follow. API users need not read.


def _echo_report(report: PublishReport) -> None:
    click.echo(f"adrank publish: {report.model} version {report.version} published at {report.path}")
    click.echo(f"  sha256   {report.sha256}  (from {report.source})")
    click.echo(f"  integer  {report.integer_kernels.describe()}")
    g = report.golden
    declared = f" within [{g.range[0]}, {g.range[1]}]" if g.range else ""
    click.echo(f"  golden   {g.rows} rows from {g.origin}: scores in [{g.min:.6g}, {g.max:.6g}]{declared}")
    if report.latency is None:
        click.echo(f"  latency  {report.latency_note}")
    else:
        lat = report.latency
        click.echo(f"  latency  ratio {lat.ratio:.3f} vs version {lat.current_version} (limit {lat.max_slowdown:.2f})")
        click.echo(f"  {'rows':>8} {'current us':>11} {'new us':>9} {'ratio':>7}")
        for s in lat.sizes:
            click.echo(f"  {s.rows:>8} {s.current_us:>11.0f} {s.new_us:>9.0f} {s.ratio:>7.3f}")
    if not report.loaded_by_policy:
        click.echo(
            f"  note     the config's version_policy leaves version {report.version} out: servers load it once "
            "the policy or the model's rollout names it"
        )
    if report.pinned_stable is not None:
        click.echo(f"  rollout  stable pinned to version {report.pinned_stable} in rollout.yaml (audited)")
    click.echo(f"adrank publish: {report.routing}")
