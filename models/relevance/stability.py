"""How far the relevance model's int8 outputs depend on the CPU's arithmetic: ONNX Runtime against exact integer
arithmetic, and which texts are stable enough to be golden queries.

The model's integer products (MatMulInteger, uint8 activations x 7-bit weights) are exact on every x86-64 CPU. The
fp32 ops around them (LayerNorm, GELU, softmax, the attention MatMuls, each dynamic quantisation's scale) run
ISA-specific kernels that differ by ulps between CPU kinds, and dynamic quantisation rounds every activation to uint8
at run time: an ulp can move one activation across a rounding step, and that text's embedding then moves by up to
~1e-2 (measured over texts.json: 13 of 65 texts on the AMD EPYC AVX2 machine of 2026-12-07), as far as 16-bit
saturation moved relevance v1 (1.95e-2). A text whose embedding is the same under several different fp32 arithmetics
on the exporting machine - ONNX Runtime at each graph optimisation level (fused and unfused kernels) and onnx's
reference evaluator (numpy) - has no activation that close to a rounding step, so the golden requests use such
texts: then the load-time parity check on another CPU compares like with like.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from head import AD, HIDDEN, IDS, MASK, QUERY_EMBEDDING, RELEVANCE, ROW_INDEX
from onnx.reference import ReferenceEvaluator
from runtime import F32, I64, LEVELS, ort_embed, session

# Largest |embedding difference| between two arithmetics for a text to count as stable: ulp noise is ~1e-7, the
# smallest rounding-step move seen was 8e-6.
STABLE_ATOL = 1e-6
REFERENCE = "reference"


def reference_evaluator(model_path: Path) -> ReferenceEvaluator:
    """onnx's reference evaluator (numpy: exact integer ops) on the model.

    It has no DequantizeLinear for opset 18, so the default domain's import is raised to 19 on this in-memory copy;
    opset 19 only added float8 types (and AveragePool dilations), which this graph does not use."""
    model = onnx.load(str(model_path))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 19)
    return ReferenceEvaluator(model)


def reference_run(model_path: Path, ids: I64, mask: I64, ads: F32, rows: I64) -> tuple[F32, F32]:
    relevance, embedding = reference_evaluator(model_path).run(
        [RELEVANCE, QUERY_EMBEDDING], {IDS: ids, MASK: mask, AD: ads, ROW_INDEX: rows}
    )
    return np.asarray(relevance, dtype=np.float32), np.asarray(embedding, dtype=np.float32)


def spread(model_path: Path, ids: I64, mask: I64) -> npt.NDArray[np.float64]:
    """Per text, the largest |difference| between its embedding under ONNX Runtime at level all (what the server
    runs) and under each other arithmetic: the other graph optimisation levels and the reference evaluator."""
    served = ort_embed(session(model_path, "all"), ids, mask)
    others = [ort_embed(session(model_path, level), ids, mask) for level in LEVELS if level != "all"]
    dummy_ad, dummy_row = np.zeros((1, HIDDEN), dtype=np.float32), np.zeros(1, dtype=np.int64)
    others.append(reference_run(model_path, ids, mask, dummy_ad, dummy_row)[1])
    return np.max([np.abs(other - served).max(axis=1) for other in others], axis=0).astype(np.float64)


def cpu() -> str:
    """The exporting machine's CPU and the instruction sets that decide ONNX Runtime's int8 and fp32 kernels."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(isa) or 'no avx2'})"
