"""The package's layering, read from its imports: nothing below the front ends knows the transport.

Model management (repository/), the rollout, the servables, backends and metrics raise and count
adrank.status codes; only the front ends and the clients (the modules named here) import grpc and map them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "adrank"
TRANSPORT_MODULES = {
    "admin_client.py",
    "cli.py",
    "client.py",
    "client_channel.py",
    "client_hedging.py",
    "client_tls.py",
}
TRANSPORT_PACKAGES = {"server"}  # the process and its front ends


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_nothing_below_the_front_ends_imports_grpc() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "v1" or str(relative) in TRANSPORT_MODULES or relative.parts[0] in TRANSPORT_PACKAGES:
            continue  # v1/: the generated wire code; the others are the transport layer
        grpc_imports = {name for name in imported_modules(path) if name == "grpc" or name.startswith("grpc.")}
        grpc_imports |= {name for name in imported_modules(path) if name.endswith("_pb2_grpc")}
        if grpc_imports:
            offenders[str(relative)] = sorted(grpc_imports)
    assert offenders == {}
