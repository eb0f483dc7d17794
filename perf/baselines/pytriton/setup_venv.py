"""Makes (once) the throwaway virtual environment PyTriton runs in, outside the project's own dependencies.

nvidia-pytriton 0.7.0 bundles tritonserver 2.51.0; tritonclient[grpc] 2.51.0 matches it (the bench uses its
`grpc_service_pb2` to serialize KServe v2 requests); ONNX Runtime is the project's own version, so the model
runs on the same engine. The environment lives under /tmp and is reused while its requirements are unchanged.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
from pathlib import Path

DEFAULT_VENV = Path("/tmp/adrank-pytriton-venv")
REQUIREMENTS = ["nvidia-pytriton==0.7.0", "tritonclient[grpc]==2.51.0"]


class SetupError(RuntimeError):
    """The environment could not be made (the message says which step failed)."""


def requirements(onnxruntime_version: str) -> list[str]:
    return [*REQUIREMENTS, f"onnxruntime=={onnxruntime_version}"]


def ensure(venv: Path, onnxruntime_version: str, python: str = sys.executable, timeout_s: float = 900) -> Path:
    """The environment's interpreter, making the environment first if it is missing or out of date."""
    wanted = "\n".join(requirements(onnxruntime_version))
    marker = venv / ".adrank-ready"
    interpreter = venv / "bin" / "python"
    if marker.is_file() and marker.read_text() == wanted and interpreter.exists():
        return interpreter
    base = _base_python(python)
    steps = [
        [base, "-m", "venv", "--clear", str(venv)],
        [str(interpreter), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted.split("\n")],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as error:
            raise SetupError(f"`{' '.join(step[:4])} ...` took over {timeout_s:.0f} s") from error
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise SetupError(f"`{' '.join(step[:4])} ...` failed: {' | '.join(tail)}")
    marker.write_text(wanted)
    return interpreter


def _base_python(python: str) -> str:
    """The interpreter a venv is made from: the base installation behind `python` (not the project's .venv)."""
    if python == sys.executable:
        base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        if base.exists():
            return str(base)
    return python


def library_dir(interpreter: Path) -> str:
    """The interpreter's LIBDIR: tritonserver's Python backend stub must load this libpython, not the system's."""
    if interpreter.resolve() == Path(sys.executable).resolve():
        return str(sysconfig.get_config_var("LIBDIR"))
    done = subprocess.run(
        [str(interpreter), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def main() -> None:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = parser.parse_args()
    print(ensure(args.venv, onnxruntime.__version__))


if __name__ == "__main__":
    main()
