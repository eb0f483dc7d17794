"""Repositories and model variants for the lifecycle and rollout tests: a copy of the bundled ctr model,
and versions of it published the way an engineer would (`adrank publish`), some of them changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
from onnx import helper

from adrank.repository.publish import PublishOptions, publish
from served import MODELS


def ctr_repository(root: Path) -> Path:
    """A repository holding the bundled ctr model (version 1) only."""
    shutil.copytree(MODELS / "ctr", root / "ctr", ignore=shutil.ignore_patterns("*.py", "README.md"))
    return root


def shifted_ctr(path: Path) -> Path:
    """ctr whose score is sqrt(ctr): still a probability, but the distribution moves up (PSI >> 0.25)."""
    model = onnx.load(str(MODELS / "ctr" / "1" / "model.onnx"))
    graph = model.graph
    output = graph.output[0]
    raw = output.name + "_unshifted"
    for node in graph.node:
        node.output[:] = [raw if name == output.name else name for name in node.output]
    graph.node.append(helper.make_node("Sqrt", [raw], [output.name], name="shift_scores"))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def publish_version(repository: Path, onnx_file: Path | None = None, version: int | None = None) -> int:
    """Publishes a version of ctr (the bundled model by default) as `adrank publish` does; its number."""
    options = PublishOptions(
        model="ctr",
        onnx=onnx_file or MODELS / "ctr" / "1" / "model.onnx",
        repository=repository,
        version=version,
        max_slowdown=100.0,  # these tests are about rollout, not the latency gate (test_publish.py)
        bench_reps=3,
    )
    return publish(options).version
