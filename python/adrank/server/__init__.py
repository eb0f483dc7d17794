"""The serving process and its front ends: everything that knows the transport.

- process: `adrank serve` (Server): loads the models, runs one front end, the admin API, the HTTP
  endpoint (metrics, dashboard) and the memory trimmer, and drains on SIGTERM;
- frontend: the C++ gRPC front end (cpp/frontend/rank_server.h) or the grpc.aio one, behind one interface;
- ranking_service: the grpc.aio transport of the Rank contract, which lives in the core (cpp/rank_call.h);
- admin_service: the admin API (load, unload, rollout policy) over gRPC;
- http_endpoint, memory_release: Prometheus metrics and the dashboard; returning freed request memory.

Below this package nothing imports grpc (tests/python/test_layering.py): errors carry adrank.status codes
and these modules map them.
"""
