"""The admin commands' token (`--server` with `adrank models / rollout / promote / rollback`): from a file only
its owner reads (`--token-file`, checked by admin_token.py exactly as `adrank serve --admin-token-file` is) or
from $ADRANK_ADMIN_TOKEN; `--token` on the command line is refused with one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_admin import TOKEN, fake_admin_server

from adrank.admin_token import TOKEN_ENV, TokenError, read_token_file
from adrank.cli import main

ADMIN_COMMANDS = [["models"], ["rollout", "ctr", "--canary", "2", "--percent", "5"], ["promote", "ctr", "2"]]


def token_file(tmp_path: Path, mode: int, text: str = TOKEN) -> Path:
    path = tmp_path / f"token-{mode:o}"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("command", [*ADMIN_COMMANDS, ["rollback", "ctr"]])
def test_a_token_on_the_command_line_is_refused_in_one_line_and_the_file_option_is_documented(command):
    result = CliRunner().invoke(main, [*command, "--server", "127.0.0.1:8501", "--token", TOKEN])
    assert result.exit_code == 2, result.output
    last = result.output.splitlines()[-1]
    assert last == (
        "Error: --token puts the token in the process list: give it in a file (--token-file, mode 0600) or in"
        f" ${TOKEN_ENV}"
    )
    help_text = " ".join(CliRunner().invoke(main, [command[0], "--help"]).output.split())
    assert "--token-file FILE A file (mode 0600: only its owner reads it) holding the server's admin token" in (
        help_text
    )
    assert "--token " not in help_text  # hidden: only its refusal remains


def test_a_token_file_only_its_owner_reads_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with fake_admin_server() as address:
        for mode in (0o600, 0o400):
            result = CliRunner().invoke(
                main, ["models", "--server", address, "--token-file", str(token_file(tmp_path, mode))]
            )
            assert result.exit_code == 0 and "FAILED" in result.output, result.output


@pytest.mark.parametrize(("mode", "text"), [(0o644, TOKEN), (0o640, TOKEN), (0o604, TOKEN), (0o600, "  ")])
def test_a_token_file_others_can_read_or_an_empty_one_is_refused_as_the_server_refuses_it(tmp_path, mode, text):
    path = token_file(tmp_path, mode, text)
    with pytest.raises(TokenError) as refused:
        read_token_file(path)
    expected = f"{path} is empty" if mode == 0o600 else f"{path} is readable by others (mode {mode:04o}): chmod 600 it"
    assert str(refused.value).startswith(expected)
    for command in (["models", "--server", "127.0.0.1:8501", "--token-file"], ["serve", "--admin-token-file"]):
        result = CliRunner().invoke(main, [*command, str(path)])
        assert result.exit_code == 2, result.output
        assert result.output.splitlines()[-1].endswith(str(refused.value)), result.output


def test_the_token_comes_from_the_environment_when_no_file_is_given(monkeypatch):
    with fake_admin_server() as address:
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        assert CliRunner().invoke(main, ["models", "--server", address]).exit_code == 0
        monkeypatch.setenv(TOKEN_ENV, "another")
        refused = CliRunner().invoke(main, ["models", "--server", address])
        assert refused.exit_code == 1 and refused.output.startswith("Error: UNAUTHENTICATED: "), refused.output
        monkeypatch.delenv(TOKEN_ENV)
        missing = CliRunner().invoke(main, ["models", "--server", address])
        assert missing.exit_code == 1
        assert missing.output == f"Error: --server needs the admin token: --token-file F (mode 0600) or ${TOKEN_ENV}\n"
