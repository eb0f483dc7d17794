"""The admin commands start fast: `adrank models --server ...` loads none of the heavy modules (it took 1.8-2.4 s
of CPU when every command imported numpy, onnx, ONNX Runtime and the core; perf/cli_startup_bench.py measures it,
never a test).

Each command imports the heavy modules it uses inside its own body (cli.py), so `import adrank.cli` loads
none of them, and the admin client none of the server's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fake_admin import TOKEN, fake_admin_server

# What no admin command needs: seconds of imports together, on a busy 2-core machine.
HEAVY = ("numpy", "onnx", "onnxruntime", "adrank._core", "adrank.repository.config", "rich", "grpc", "pydantic")


def loaded_after(statement: str) -> set[str]:
    """The modules among HEAVY that `statement` loads, in a fresh interpreter."""
    probe = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout)) & set(HEAVY)


def test_importing_the_command_line_loads_no_heavy_module():
    assert loaded_after("import adrank.cli") == set()


def test_the_admin_client_loads_grpc_alone_not_the_policy_schemas_the_server_or_the_models():
    assert loaded_after("import adrank.admin_client") == {"grpc"}


def test_models_from_a_server_lists_what_the_server_says():
    """The command works with its lazy imports (its CPU time is measured by perf/cli_startup_bench.py)."""
    adrank = Path(sys.executable).with_name("adrank")
    env = {**os.environ, "ADRANK_ADMIN_TOKEN": TOKEN}
    with fake_admin_server() as address:
        done = subprocess.run(
            [str(adrank), "models", "--server", address], capture_output=True, text=True, env=env, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert "ctr" in done.stdout and "FAILED" in done.stdout
