"""Every `adrank` command, given a caller's mistake, answers with one `Error:` line: exit 2 for an option or
argument refused when parsed (click's usage error), exit 1 for what only the repository or a server can refuse
(an unknown model or version, a server that is not there or not an admin port); never a traceback, never a
pydantic validation dump.

The commands are enumerated from the click group, nested ones included: a command added without bad-argument
cases here fails `test_every_command_has_bad_argument_cases`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from certs import Pki
from click.testing import CliRunner
from fake_admin import TOKEN, bare_grpc_server, fake_admin_server

from adrank.admin_token import TOKEN_ENV
from adrank.cli import main
from served import MODELS

# Placeholders in the cases, filled per test: {repo} a copy of the bundled ctr model's repository (the cases
# must not change it, but a slip must not change the checkout), {models} the bundled repository (read-only
# cases), {missing} a path that does not exist, {texts} a file of two ad texts, {open_token} a token file others
# may read (0644), {token} one only its owner reads, {closed} a port nothing listens on, {rank} a gRPC port with
# no admin service, {admin} a stand-in admin port, {onnx} the ctr model file, {ca} a CA's certificate, {cert} and
# {key} a client certificate and its key (0600), {open_key} the key readable by others (0644), {not_yaml} a file
# that is not YAML, {broken} a copy of {repo} whose ctr/rollout.yaml is not YAML, {binary} ad texts not in UTF-8.
BAD_ARGUMENTS: dict[str, list[tuple[list[str], int]]] = {
    "serve": [
        (["--repository", "{repo}", "--grpc-port", "70000"], 2),
        (["--repository", "{repo}", "--http-port", "-1"], 2),
        (["--repository", "{repo}", "--admin-port", "65536"], 2),
        (["--repository", "{repo}", "--workers", "-1"], 2),
        (["--repository", "{repo}", "--host", "nonsense.invalid"], 2),
        (["--repository", "{repo}", "--http-host", "999.1.1.1"], 2),
        (["--repository", "{repo}", "--admin-host", ""], 2),
        (["--repository", "{repo}", "--max-concurrent-streams", "0"], 2),
        (["--repository", "{repo}", "--keepalive", "0"], 2),
        (["--repository", "{repo}", "--frontend", "java"], 2),
        (["--repository", "{repo}", "--log-level", "loud"], 2),
        (["--repository", "{repo}", "--tenants", "{missing}"], 2),
        (["--repository", "{repo}", "--tenants", "{not_yaml}"], 2),
        (["--repository", "{repo}", "--tenants", "{texts}"], 2),  # YAML, but not a mapping of tenants
        (["--repository", "{repo}", "--admin-token", "secret"], 2),
        (["--repository", "{repo}", "--admin-token-file", "{missing}"], 2),
        (["--repository", "{repo}", "--admin-token-file", "{open_token}"], 2),
        (["--repository", "{missing}"], 1),
        (["--repository", "{repo}", "--audit-log", "{texts}"], 2),  # a file, not a directory
    ],
    "embed": [
        (["--repository", "{repo}", "--model", "ctr", "{texts}", "-o", "{out}"], 1),  # not a text model
        (["--repository", "{repo}", "--model", "nosuch", "{texts}", "-o", "{out}"], 1),
        (["--repository", "{models}", "--version", "99", "{texts}", "-o", "{out}"], 1),
        (["--repository", "{models}", "--version", "-1", "{texts}", "-o", "{out}"], 2),
        (["--repository", "{models}", "--model", "../ctr", "{texts}", "-o", "{out}"], 2),
        (["--repository", "{models}", "{missing}", "-o", "{out}"], 2),
        (["--repository", "{models}", "{binary}", "-o", "{out}"], 2),  # not UTF-8 text
        (["--repository", "{models}", "{texts}"], 2),  # no -o
        (["--repository", "{missing}", "{texts}", "-o", "{out}"], 1),
    ],
    "models": [
        (["--repository", "{repo}", "nosuch"], 1),
        (["--repository", "{repo}", "../ctr"], 2),
        (["--repository", "{missing}"], 1),
        (["--repository", "{repo}", "--history", "--audit-log", "{texts}/under"], 2),  # below a file
        (["--repository", "{repo}", "--audit-log", ""], 2),
        (["--server", "localhost"], 2),
        (["--server", "127.0.0.1:70000"], 2),
        (["--server", "127.0.0.1:{admin}", "--token", "secret"], 2),
        (["--server", "127.0.0.1:{admin}", "--token-file", "{missing}"], 2),
        (["--server", "127.0.0.1:{admin}", "--token-file", "{open_token}"], 2),
        (["--server", "127.0.0.1:{admin}"], 1),  # no token
        (["--server", "127.0.0.1:{admin}", "--token-file", "{token}"], 1),  # the wrong token: UNAUTHENTICATED
        (["--server", "127.0.0.1:{closed}", "--token-file", "{token}"], 1),
        (["--server", "127.0.0.1:{rank}", "--token-file", "{token}"], 1),
        (["--repository", "{repo}", "--tls-ca", "{ca}"], 2),  # --tls-* without --server
        (["--server", "127.0.0.1:{admin}", "--token-file", "{token}", "--tls-ca", "{missing}"], 2),
        (["--server", "127.0.0.1:{admin}", "--token-file", "{token}", "--tls-ca", "{texts}"], 2),  # not PEM
        (["--server", "127.0.0.1:{admin}", "--token-file", "{token}", "--tls-cert", "{cert}"], 2),  # no --tls-key
        (["--server", "127.0.0.1:{admin}", "--token-file", "{token}", "--tls-key", "{key}"], 2),  # no --tls-cert
        (["--server", "127.0.0.1:{admin}", "--tls-cert", "{cert}", "--tls-key", "{open_key}"], 2),
        (["--server", "127.0.0.1:{admin}", "--token-file", "{token}", "--tls-server-name", ""], 2),
        (["--server", "127.0.0.1:{admin}", "--token-file", "{token}", "--tls-ca", "{ca}"], 1),  # a plaintext port
    ],
    "rollout": [
        (["ctr", "--repository", "{repo}", "--canary", "3", "--percent", "150"], 2),
        (["ctr", "--repository", "{repo}", "--canary", "0", "--percent", "5"], 2),
        (["ctr", "--repository", "{repo}", "--shadow", "-2"], 2),
        (["ctr", "--repository", "{repo}", "--shadow", "2", "--sample-percent", "-1"], 2),
        (["ctr", "--repository", "{repo}", "--canary", "2"], 2),  # no --percent
        (["ctr", "--repository", "{repo}"], 2),  # no change asked
        (["ctr/..", "--repository", "{repo}", "--canary", "2", "--percent", "5"], 2),
        (["ctr", "--repository", "{repo}", "--audit-log", "{texts}", "--canary", "2", "--percent", "5"], 2),
        (["nosuch", "--repository", "{repo}", "--canary", "2", "--percent", "5"], 1),
        (["ctr", "--repository", "{repo}", "--canary", "99", "--percent", "5"], 1),  # no version 99
        (["ctr", "--repository", "{repo}", "--canary", "1", "--percent", "5"], 1),  # 1 is stable
        (["ctr", "--repository", "{broken}", "--canary", "1", "--percent", "5"], 1),  # rollout.yaml not YAML
        (["ctr", "--server", "127.0.0.1:{rank}", "--token-file", "{token}", "--canary", "2", "--percent", "5"], 1),
        (["ctr", "--server", "127.0.0.1:{closed}", "--token", "secret", "--canary", "2", "--percent", "5"], 2),
    ],
    "promote": [
        (["ctr", "0", "--repository", "{repo}"], 2),
        (["ctr", "two", "--repository", "{repo}"], 2),
        (["a/b", "1", "--repository", "{repo}"], 2),
        (["nosuch", "2", "--repository", "{repo}"], 1),
        (["ctr", "99", "--repository", "{repo}"], 1),
        (["ctr", "1", "--repository", "{broken}"], 1),
        (["ctr", "2", "--server", "127.0.0.1:{closed}", "--token-file", "{token}"], 1),
        (["ctr", "2", "--server", "127.0.0.1:{admin}", "--tls-cert", "{cert}"], 2),
    ],
    "rollback": [
        (["nosuch", "--repository", "{repo}"], 1),
        (["ctr", "--repository", "{repo}"], 1),  # nothing to roll back
        (["..", "--repository", "{repo}"], 2),
        (["ctr", "--server", "127.0.0.1:{rank}", "--token-file", "{token}"], 1),
        (["ctr", "--server", ":8501"], 2),
        (["ctr", "--server", "127.0.0.1:{admin}", "--tls-key", "{open_key}", "--tls-cert", "{cert}"], 2),
    ],
    "publish": [
        (["{missing}", "--model", "ctr", "--repository", "{repo}"], 1),
        (["{onnx}", "--model", "nosuch", "--repository", "{repo}"], 1),
        (["{onnx}", "--model", "ctr", "--repository", "{missing}"], 1),
        (["{onnx}", "--model", "ctr", "--repository", "{repo}", "--max-slowdown", "0"], 2),
        (["{onnx}", "--model", "ctr", "--repository", "{repo}", "--bench-reps", "0"], 2),
        (["{onnx}", "--model", "ctr", "--repository", "{repo}", "--version", "0"], 2),
        (["{onnx}", "--repository", "{repo}"], 2),  # no --model
        (["{onnx}", "--model", "../ctr", "--repository", "{repo}"], 2),
        (["{onnx}", "--model", "ctr", "--repository", "{repo}", "--audit-log", "{texts}"], 2),
    ],
}


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    """Every leaf command of the group, as its words joined by spaces ("rollout", "some group sub")."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name))


def test_every_command_has_bad_argument_cases():
    assert sorted(command_paths(main)) == sorted(BAD_ARGUMENTS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("cli_errors")
    repo = root / "repo"
    shutil.copytree(MODELS / "ctr", repo / "ctr", ignore=shutil.ignore_patterns("*.py", "README.md"))
    texts = root / "ads.txt"
    texts.write_text("red running shoes\ncheap flights to lisbon\n")
    binary = root / "ads.bin"
    binary.write_bytes(b"red shoes\n\xb9\xff\x00\n")
    not_yaml = root / "not.yaml"
    not_yaml.write_text("tenants: {gold: [\n")
    broken = root / "broken"
    shutil.copytree(repo, broken)
    (broken / "ctr" / "rollout.yaml").write_text("stable: [1\n")
    open_token, token = root / "open-token", root / "token"
    for path, mode in ((open_token, 0o644), (token, 0o600)):
        path.write_text("not-the-token\n")
        path.chmod(mode)
    pki = Pki.create(root / "pki")
    client = pki.client("alice")
    open_key = root / "open.key"
    open_key.write_bytes(client.key.read_bytes())
    open_key.chmod(0o644)
    with fake_admin_server() as admin, bare_grpc_server() as rank:
        yield {
            "repo": str(repo),
            "models": str(MODELS),
            "missing": str(root / "missing"),
            "texts": str(texts),
            "not_yaml": str(not_yaml),
            "binary": str(binary),
            "broken": str(broken),
            "out": str(root / "out.npy"),
            "open_token": str(open_token),
            "token": str(token),
            "closed": str(free_port()),
            "rank": rank.rpartition(":")[2],
            "admin": admin.rpartition(":")[2],
            "onnx": str(MODELS / "ctr" / "1" / "model.onnx"),
            "ca": str(pki.ca_file),
            "cert": str(client.cert),
            "key": str(client.key),
            "open_key": str(open_key),
        }


def assert_one_error_line(output: str, exit_code: int) -> None:
    assert "Traceback" not in output, output
    assert "validation error" not in output.lower() and "pydantic" not in output.lower(), output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and output.splitlines()[-1] == errors[0], output
    assert exit_code in (1, 2), output


@pytest.mark.parametrize(
    ("command", "arguments", "exit_code"),
    [(command, arguments, code) for command, cases in BAD_ARGUMENTS.items() for arguments, code in cases],
)
def test_a_bad_argument_is_one_error_line(places, monkeypatch, command, arguments, exit_code):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    filled = [part.format(**places) for part in arguments]
    result = CliRunner().invoke(main, [*command.split(), *filled])
    # Anything but click's exit is an exception the command let through: a traceback outside CliRunner.
    assert isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert result.exit_code == exit_code, result.output
    assert_one_error_line(result.output, result.exit_code)


def test_the_right_token_gets_through_to_the_stand_in(places):
    """The cases above fail for their mistake alone: with the right token, the same server answers."""
    result = CliRunner(env={TOKEN_ENV: TOKEN}).invoke(main, ["models", "--server", f"127.0.0.1:{places['admin']}"])
    assert result.exit_code == 0 and "FAILED" in result.output, result.output


@pytest.mark.parametrize(
    "arguments",
    [
        ["rollout", "ctr", "--canary", "3", "--percent", "150", "--repository", "{repo}"],
        ["embed", "--model", "ctr", "--repository", "{repo}", "{texts}", "-o", "{out}"],
    ],
)
def test_the_command_as_a_process_prints_one_line_and_no_traceback(places, arguments):
    adrank = Path(sys.executable).with_name("adrank")
    filled = [part.format(**places) for part in arguments]
    done = subprocess.run([str(adrank), *filled], capture_output=True, text=True, timeout=60)
    assert done.stdout == ""
    assert_one_error_line(done.stderr, done.returncode)
