"""PyTriton serving the bundled `ctr` ONNX model: Triton's dynamic batcher in front of ONNX Runtime.

Runs in the throwaway environment that `setup_venv.py` makes (nvidia-pytriton bundles tritonserver, which
only has its Python backend here: the model is a Python callable decorated with `@batch` that runs ONNX Runtime,
one thread, like adrank's backend). The dynamic batcher is configured as adrank's `ctr` config batches:
preferred batch sizes 64/256/1024, a 200 us queue delay, at most 2048 rows per batch. Triton's gRPC endpoint
speaks KServe v2 (`inference.GRPCInferenceService/ModelInfer`); every port binds 127.0.0.1.

    LD_LIBRARY_PATH=<interpreter LIBDIR> PYTRITON_HOME=<tmp> <venv>/bin/python server.py --model-dir models/ctr/1 \
        --grpc-port P --http-port Q --workspace <tmp>

prints `pytriton: SERVING ctr on grpc 127.0.0.1:P` on stderr once the model answers; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # Triton.serve() stops on it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="folder holding model.onnx")
    parser.add_argument("--name", default="ctr")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--max-queue-delay-us", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(args.model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
    )

    @batch
    def infer(dense: np.ndarray, sparse: np.ndarray) -> dict[str, np.ndarray]:
        (ctr,) = session.run(["ctr"], {"dense": dense, "sparse": sparse})
        return {"ctr": ctr.reshape(-1, 1)}

    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        allow_metrics=False,
        allow_gpu_metrics=False,
        allow_cpu_metrics=False,
        log_verbose=0,
    )
    signal.signal(signal.SIGTERM, _stop)
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[
                Tensor(name="dense", dtype=np.float32, shape=(13,)),
                Tensor(name="sparse", dtype=np.int64, shape=(26,)),
            ],
            outputs=[Tensor(name="ctr", dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                max_batch_size=2048,
                batcher=DynamicBatcher(
                    max_queue_delay_microseconds=args.max_queue_delay_us, preferred_batch_size=[64, 256, 1024]
                ),
            ),
            strict=False,
        )
        triton.connect()
        print(f"pytriton: SERVING {args.name} on grpc 127.0.0.1:{args.grpc_port}", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            triton.serve()


if __name__ == "__main__":
    main()
