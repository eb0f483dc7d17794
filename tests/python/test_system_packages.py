"""scripts/system_packages.sh, the one list of Debian packages `make serve`, `make test` and `.ci/run` install.

Run with stand-ins for `dpkg-query`, `id` and `apt-get` on PATH, so that no package is touched: what it does
when everything is there, when a package is missing as root (installs just the missing ones) and as anyone else
(one line naming the command, exit 1, nothing installed).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system_packages.sh"


def stand_ins(folder: Path, missing: set[str], uid: int) -> Path:
    """A PATH folder whose dpkg-query says `missing` are not installed, whose id says `uid`, and whose apt-get
    records its arguments in apt.log instead of installing."""
    folder.mkdir()
    missing_list = " ".join(sorted(missing))
    scripts = {
        "dpkg-query": f'for m in {missing_list or "-"}; do [ "$m" = "${{@: -1}}" ] && exit 1; done; printf installed',
        "id": f"echo {uid}",
        "apt-get": f'echo "$@" >> {folder / "apt.log"}',
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    return folder


def run(folder: Path, group: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(SCRIPT), group], capture_output=True, text=True, env=env, timeout=60)


def test_everything_installed_does_nothing_and_says_nothing(tmp_path):
    folder = stand_ins(tmp_path / "bin", set(), uid=0)
    done = run(folder, "test")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not (folder / "apt.log").exists()


def test_as_root_it_installs_only_what_is_missing(tmp_path):
    folder = stand_ins(tmp_path / "bin", {"libgrpc++-dev", "chromium"}, uid=0)
    done = run(folder, "test")
    assert done.returncode == 0, done.stderr
    calls = (folder / "apt.log").read_text().splitlines()
    assert len(calls) == 2 and "update" in calls[0].split()
    install = calls[1].split()
    assert install[0] == "install"
    assert {word for word in install[1:] if not word.startswith("-")} == {"libgrpc++-dev", "chromium"}


def test_the_serve_group_does_not_ask_for_the_test_packages(tmp_path):
    folder = stand_ins(tmp_path / "bin", {"chromium", "prometheus", "libgtest-dev"}, uid=0)
    done = run(folder, "serve")
    assert done.returncode == 0 and not (folder / "apt.log").exists()


def test_anyone_else_gets_one_line_naming_the_command_and_nothing_installed(tmp_path):
    folder = stand_ins(tmp_path / "bin", {"protobuf-compiler"}, uid=1000)
    done = run(folder, "serve")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install" in lines[0] and "protobuf-compiler" in lines[0]
    assert not (folder / "apt.log").exists()


def test_an_unknown_group_is_a_usage_error(tmp_path):
    done = run(stand_ins(tmp_path / "bin", set(), uid=0), "everything")
    assert done.returncode == 2 and "usage" in done.stderr
