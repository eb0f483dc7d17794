"""Loading one version, checked: what makes a version routable (DESIGN.md, Model repository).

`load_checked` runs the steps in order and returns a Servable only when every one passed:
1. meta.json names this model and version, and model.onnx hashes to its sha256 (not corrupt, not replaced);
2. the backend's sessions load, one per instance, and the model's core queue is registered (Servable.load);
3. warm-up: one batch at every size a batch can close at, so that the first real request pays for none;
4. parity: the golden inputs, replayed through the core's Rank contract as clients' calls are served
   (Servable.score), give the golden outputs within the version's tolerance, and every one is finite. Its
   refusal names this CPU's integer-kernel features (cpu_features.py: "on this CPU: avx2, no avx512_vnni,
   no avx_vnni"), and the int8 nodes that meta.json says can saturate without VNNI, if any: the usual reason
   why a model scores differently on one kind of CPU.
A step that fails raises with the reason; what was loaded is unloaded first, so a failed load leaves
nothing behind and the serving version untouched (it was never touched: the caller registers only what
this returns).

Thread-safety: a pure function of its arguments and the version's files; loads may run concurrently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import adrank._core as core
from adrank.cpu_features import cpu_features
from adrank.repository.layout import ModelEntry
from adrank.repository.meta import (
    META_FILE,
    Golden,
    IntegerKernels,
    MetaError,
    VersionMeta,
    golden_outputs,
    golden_requests,
    load_meta,
    sha256_file,
)
from adrank.servable import Servable


def file_signature(version_dir: Path) -> tuple[float, ...]:
    """The version's files' mtimes: a change lets a FAILED version be tried again."""
    try:
        return tuple(sorted(p.stat().st_mtime for p in version_dir.iterdir()))
    except OSError:
        return ()


def load_checked(
    pool: core.ThreadPool, entry: ModelEntry, version: int, tenants: core.TenantOptions | None = None
) -> Servable:
    version_dir = entry.version_dir(version)
    meta = verified_meta(entry, version_dir)
    servable = Servable.load(pool, entry.config, version_dir, version, tenants)
    try:
        servable.warm_up()
        check_parity(servable, meta.golden, meta.integer_kernels)
    except BaseException:
        servable.unload(pool)
        raise
    return servable


def verified_meta(entry: ModelEntry, version_dir: Path) -> VersionMeta:
    meta = load_meta(version_dir / META_FILE)
    if meta.model != entry.name or meta.version != int(version_dir.name):
        raise MetaError(
            f"{version_dir / META_FILE}: says model '{meta.model}' version {meta.version}, "
            f"but sits in {entry.name}/{version_dir.name}"
        )
    digest = sha256_file(version_dir / "model.onnx")
    if digest != meta.sha256:
        raise MetaError(
            f"{version_dir / 'model.onnx'}: sha256 {digest[:12]}… differs from meta.json's "
            f"{meta.sha256[:12]}… (corrupt or replaced file)"
        )
    return meta


def check_parity(servable: Servable, golden: Golden, integer_kernels: IntegerKernels | None = None) -> None:
    expected = golden_outputs(servable.config, golden.outputs)
    got = np.concatenate(servable.score(golden_requests(servable.config, golden.inputs)))
    if got.shape != expected.shape:
        raise MetaError(f"parity: {got.size} golden outputs, meta.json holds {expected.size}")
    diff = np.abs(got.astype(np.float64) - expected)
    worst = float(np.nanmax(diff)) if diff.size else 0.0
    atol = servable.parity_atol(golden.atol)
    if not np.all(np.isfinite(got)) or worst > atol:
        row = int(np.nanargmax(diff)) if diff.size else 0
        raise MetaError(
            f"parity: golden row {row} scores {got[row]:.7g}, meta.json says {expected[row]:.7g} "
            f"(|diff| {worst:.3g} > atol {atol:g}) on this CPU: {cpu_features().summary()}"
            f"{_saturation_hint(integer_kernels)}"
        )


def _saturation_hint(integer_kernels: IntegerKernels | None) -> str:
    if integer_kernels is None or not integer_kernels.saturation_risk:
        return ""
    return f"; meta.json: {integer_kernels.note()}"
