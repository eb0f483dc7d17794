"""The README's quick start and the example, run as a newcomer would, against a served repository.

The quick start's commands and snippet are read from README.md itself, so that the two cannot drift: its
`curl` of /readyz must print what the README shows, and its Python snippet must run and print what the README
shows (scores within the last printed digit: another CPU's kernels may move them that much). The example must
run from what the repository ships when the Criteo rows beside the checkout are not there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from references import latest_version

from served import REPO, ServerThread

README = REPO / "README.md"
DEFAULT_GRPC = "127.0.0.1:8500"
NUMBER = re.compile(r"[-+]?\d+\.\d+")


def quick_start() -> str:
    text = README.read_text()
    start = text.index("\n## Quick start\n")
    return text[start : text.index("\n## ", start + 1)]


def blocks(section: str, language: str) -> list[str]:
    """The section's fenced blocks of one language, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    running = ServerThread(frontend="python").start()  # the bundled models, as `make serve` serves them
    yield running
    running.stop()


def test_the_quick_start_curl_prints_what_the_readme_shows(server):
    (console,) = blocks(quick_start(), "console")
    command, *shown = console.splitlines()
    match = re.fullmatch(r"\$ curl -s 127\.0\.0\.1:8000(/\S+)", command)
    assert match, command
    port = server.server.http_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{match.group(1)}", timeout=10) as reply:
        assert reply.read().decode().splitlines() == shown


def test_the_quick_start_snippet_runs_and_prints_what_the_readme_shows(server):
    section = quick_start()
    (snippet,) = blocks(section, "python")
    (shown,) = blocks(section, "text")
    assert DEFAULT_GRPC in snippet
    done = subprocess.run(
        [sys.executable, "-c", snippet.replace(DEFAULT_GRPC, server.target)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,  # as the README says: from the top of the checkout
    )
    assert done.returncode == 0, done.stderr
    printed, expected = done.stdout.splitlines(), shown.splitlines()
    assert len(printed) == len(expected), done.stdout
    for got, want in zip(printed, expected, strict=True):
        assert NUMBER.sub("#", got) == NUMBER.sub("#", want), (got, want)
        for a, b in zip(NUMBER.findall(got), NUMBER.findall(want), strict=True):
            last_digit = 10.0 ** -len(b.split(".")[1])
            assert abs(float(a) - float(b)) <= last_digit + 1e-9, (got, want)


def test_the_serving_sections_snippet_runs_as_it_stands(server):
    text = README.read_text()
    start = text.index("\n## Serving\n")
    snippet = blocks(text[start : text.index("\n## ", start + 1)], "python")[0]  # the API's; the next: TLS
    assert DEFAULT_GRPC in snippet and "timeout=0.05" in snippet
    # An auction's 50 ms deadline, on a test machine that may be busy with other tests: 10 s.
    runnable = snippet.replace(DEFAULT_GRPC, server.target).replace("timeout=0.05", "timeout=10")
    done = subprocess.run([sys.executable, "-c", runnable], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{latest_version('ctr')}\n"


def test_every_serving_snippet_defines_what_it_uses():
    """The snippets past the first (TLS and a fleet) need files and replicas to run; they must still name
    nothing they do not import or define (F821), as the quick start's first snippet once did."""
    text = README.read_text()
    start = text.index("\n## Serving\n")
    snippets = blocks(text[start : text.index("\n## ", start + 1)], "python")
    assert len(snippets) >= 2
    for snippet in snippets:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ruff",
                "check",
                "--no-cache",
                "--select",
                "F821,F401",
                "--stdin-filename",
                "s.py",
                "-",
            ],
            input=snippet,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + snippet


def test_the_example_runs_from_the_golden_requests_without_the_data_folder(server, tmp_path: Path):
    missing = tmp_path / "no_data" / "sample_200.csv"
    command = [sys.executable, str(REPO / "examples" / "rank_example.py"), "--target", server.target]
    command += ["--data", str(missing), "--timeout", "5"]  # a loaded test machine, not the auction budget
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    first, *lines = done.stdout.splitlines()
    assert first.startswith(f"no Criteo rows at {missing}: ") and "golden requests" in first
    assert done.stderr == ""
    # every bundled model's golden requests, from its newest version, each within the scores recorded for it
    newest = {f"{model} v{latest_version(model)}" for model in ("ctr", "relevance")}
    assert {line.split(" golden request ")[0] for line in lines} == newest, done.stdout
    for line in lines:
        off = float(re.search(r", (\S+) at most from meta\.json's$", line).group(1))
        assert off <= 1e-3, line
