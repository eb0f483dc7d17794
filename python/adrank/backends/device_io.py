"""DeviceIO: one model instance's GPU side — its CUDA stream, and device buffers for every graph input
and output, sized once for the largest batch.

A GPU session runs a batch in four steps, all enqueued on the instance's own stream so that instances
overlap with one another and never wait on the legacy default stream:
1. `stage_inputs`: copy each input from its pooled host buffer (page-locked when the memory pool found
   a CUDA runtime: the copy is a DMA that does not block the CPU) into the input's device buffer;
2. the backend binds the device addresses and enqueues the model on the same stream (ONNX Runtime's
   `user_compute_stream`, TensorRT's `execute_async_v3`);
3. `fetch_outputs`: copy each output's rows back into the batch's pooled output buffer;
4. `synchronize`: wait, without the GIL, for the stream.
Nothing is allocated per batch: the buffers are made at load (a device too small for them fails the
load, not a batch).

Thread-safety: one instance runs one batch at a time (backends/base.py), so a DeviceIO is never used by
two threads at once. Host arrays handed to `stage_inputs`/`fetch_outputs` must stay alive until
`synchronize` returns; DeviceIO keeps references to them until then.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

import adrank._core as core
from adrank.backends.base import BackendError
from adrank.backends.graph import ModelGraph


def cuda_unavailable_reason() -> str | None:
    """Why no GPU can be used in this process, or None when one can."""
    probe = core.cuda_probe()
    return None if probe["available"] else str(probe["reason"])


class DeviceIO:
    def __init__(
        self,
        graph: ModelGraph,
        stream: core.CudaStream,
        output_bytes: Mapping[str, int],
        inputs: list[str] | None = None,
    ) -> None:
        """Device buffers on `stream`'s device for `inputs` (default: every graph input) and the outputs.
        Raises CoreError when the device cannot hold them."""
        self.stream = stream
        self.device_id = stream.device
        names = graph.input_names if inputs is None else inputs
        self.inputs = {n: core.DeviceBuffer(stream.device, graph.dims[n].max_bytes(graph.config)) for n in names}
        self.outputs = {name: core.DeviceBuffer(stream.device, size) for name, size in output_bytes.items()}
        self._in_flight: list[np.ndarray] = []

    def stage_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Enqueues the copy of every input to its device buffer."""
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            buffer = self.inputs[name]
            if array.nbytes > buffer.size:
                raise BackendError(f"input '{name}': {array.nbytes} bytes exceed its device buffer of {buffer.size}")
            self.stream.copy_to_device(buffer, array)
            self._in_flight.append(array)

    def fetch_outputs(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Enqueues the copy of every output's rows into the given host arrays (filled in place)."""
        for name, array in outputs.items():
            buffer = self.outputs[name]
            if array.nbytes > buffer.size:
                raise BackendError(f"output '{name}': {array.nbytes} bytes exceed its device buffer of {buffer.size}")
            self.stream.copy_to_host(array, buffer)
            self._in_flight.append(array)

    def synchronize(self) -> None:
        """Waits for the stream; the host arrays of this batch may be reused afterwards."""
        try:
            self.stream.synchronize()
        finally:
            self._in_flight.clear()
