"""Baselines that adrank is measured against: a hand-written grpc.aio server, PyTriton (Triton + dynamic batching)."""
