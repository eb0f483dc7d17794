"""Repositories and model variants for the lifecycle, rollout and health tests: a copy of the bundled ctr
model, versions of it published the way an engineer would (`adrank publish`), some of them changed, a
second model made of it, and model files damaged after their publish."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from onnx import helper

from adrank.publish.pipeline import PublishOptions, publish
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


def corrupt(model_file: Path) -> bytes:
    """Damages a published model.onnx (its sha256 no longer matches meta.json); returns the good bytes."""
    good = model_file.read_bytes()
    model_file.write_bytes(good[:-100] + b"\0" * 100)
    return good


def second_model(repo: Path, name: str = "ctr2") -> Path:
    """A copy of ctr (version 1) under another name."""
    shutil.copytree(repo / "ctr", repo / name)
    config = repo / name / "config.yaml"
    config.write_text(config.read_text().replace("name: ctr", f"name: {name}", 1))
    meta_file = repo / name / "1" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["model"] = name
    meta_file.write_text(json.dumps(meta))
    return repo / name
