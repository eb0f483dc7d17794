"""adrank's benchmarks: the request sets, the load generator, the engine-only limit, the baselines and `bench`.

Run from the top of the checkout: `make bench` / `make bench-quick`, or `.venv/bin/python perf/bench.py --help`.
"""
