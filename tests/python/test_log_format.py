"""The server's log (log_format.py): `--log-format json` writes one JSON object a line, a version's load
carrying its model and version, and a call the server failed (answered INTERNAL: server/call_errors.py) its
model, version, tenant and request id; `--log-level warning` hides info records; a value that is not one of the
choices is a usage error (exit 2) naming the option."""

from __future__ import annotations

import io
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from click.testing import CliRunner
from rollout_models import ctr_repository
from test_serve_process import end, start

from adrank.backends.onnxruntime import OnnxRuntimeSession
from adrank.cli import main
from adrank.client import RankClient, RankError
from adrank.log_format import JsonFormatter, LogOptions, configure_logging, log_fields
from adrank.server import call_errors
from served import FRONTENDS, ServerThread


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was (handlers, level) after the test configures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("adrank.models", logging.INFO, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_carries_time_level_logger_message_and_the_context_fields_given():
    line = JsonFormatter().format(record("ctr version 2 AVAILABLE", **log_fields(model="ctr", version=2)))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed.keys() == {"time", "level", "logger", "message", "model", "version"}
    assert (parsed["level"], parsed["logger"], parsed["message"]) == (
        "info",
        "adrank.models",
        "ctr version 2 AVAILABLE",
    )
    assert (parsed["model"], parsed["version"]) == ("ctr", 2)
    assert parsed["time"].endswith("+00:00") and "T" in parsed["time"]
    assert log_fields(tenant="ads", request_id="r-1") == {"tenant": "ads", "request_id": "r-1"}


def test_a_record_with_newlines_or_an_exception_is_still_one_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        failed = record("two\nlines")
        failed.exc_info = sys.exc_info()
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "two\nlines"
    assert "ValueError: bad\nthing" in parsed["exception"]


def test_the_level_hides_less_severe_records_and_a_later_configuration_replaces_the_earlier(root_logger):
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LogOptions(level="info", format="text"), first)
    configure_logging(LogOptions(level="warning", format="json"), second)
    log = logging.getLogger("adrank.test")
    log.info("hidden")
    log.warning("shown", extra=log_fields(model="ctr"))
    assert first.getvalue() == ""
    (line,) = second.getvalue().splitlines()
    assert json.loads(line)["message"] == "shown" and json.loads(line)["model"] == "ctr"


@pytest.mark.parametrize(("option", "value"), [("--log-level", "verbose"), ("--log-format", "xml")])
def test_a_value_not_among_the_choices_exits_2_naming_the_option(tmp_path, option, value):
    result = CliRunner().invoke(main, ["serve", "--repository", str(tmp_path), option, value])
    assert result.exit_code == 2, result.output
    last = result.output.splitlines()[-1]
    assert last.startswith(f"Error: Invalid value for '{option}': '{value}' is not one of"), result.output


def test_serve_with_json_logs_writes_json_lines_and_a_load_names_its_model_and_version(tmp_path):
    proc, _, lines = start(ctr_repository(tmp_path / "repo"), "--log-format", "json")
    end(proc)
    parsed = [json.loads(line) for line in lines]  # every line until SERVING, that one included
    assert all({"time", "level", "logger", "message"} <= p.keys() for p in parsed), lines
    loaded = [p for p in parsed if p["logger"] == "adrank.models" and "AVAILABLE" in p["message"]]
    assert [(p["level"], p["model"], p["version"]) for p in loaded] == [("info", "ctr", 1)], lines
    assert "SERVING ctr v1" in parsed[-1]["message"]


def test_serve_at_warning_level_writes_no_info_records(tmp_path):
    proc, _, lines = start(ctr_repository(tmp_path / "repo"), "--log-level", "warning")
    end(proc)
    assert [line for line in lines if " INFO " in line or " DEBUG " in line] == [], lines
    assert "SERVING ctr v1" in lines[-1]  # the command's own answer, whatever the level


def raising(self: OnnxRuntimeSession, batch: object) -> None:
    raise RuntimeError("the session lost its GPU")  # a backend that fails at run time, after its checks passed


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_call_the_server_fails_is_logged_with_model_version_tenant_and_request_id_and_a_callers_mistake_is_not(
    tmp_path, frontend, caplog, monkeypatch
):
    server = ServerThread(ctr_repository(tmp_path / "repo"), frontend=frontend).start()
    candidates = {"dense": np.ones((3, 13), np.float32), "sparse": np.zeros((3, 26), np.int64)}
    try:
        with caplog.at_level(logging.ERROR, logger="adrank.calls"), RankClient(server.target, tenant="gold") as client:
            with pytest.raises(RankError) as mistake:  # the caller's: a tensor of the wrong shape
                client.rank(["ctr"], {**candidates, "dense": np.ones((3, 12), np.float32)}, request_id="auction-1")
            assert mistake.value.code.name == "INVALID_ARGUMENT"
            monkeypatch.setattr(OnnxRuntimeSession, "run", raising)
            with pytest.raises(RankError) as failed:
                client.rank(["ctr"], candidates, request_id="auction-2")
            assert failed.value.code.name == "INTERNAL"
            document = {
                "id": "kserve-3",
                "inputs": [
                    {"name": "dense", "datatype": "FP32", "shape": [3, 13], "data": [1.0] * 39},
                    {"name": "sparse", "datatype": "INT64", "shape": [3, 26], "data": [0] * 78},
                ],
            }
            url = f"http://127.0.0.1:{server.server.http_port}/v2/models/ctr/infer"
            with pytest.raises(urllib.error.HTTPError) as rest:  # KServe v2 takes the same contract
                urllib.request.urlopen(urllib.request.Request(url, json.dumps(document).encode()), timeout=30)
            assert rest.value.code == 500
    finally:
        server.stop()
    records = [r for r in caplog.records if r.name == "adrank.calls"]
    lines = [json.loads(JsonFormatter().format(r)) for r in records]
    fields = [(line["level"], line["model"], line["version"], line["tenant"], line["request_id"]) for line in lines]
    assert fields == [("error", "ctr", 1, "gold", "auction-2"), ("error", "ctr", 1, "default", "kserve-3")], lines
    assert all("the session lost its GPU" in line["message"] for line in lines), lines


def test_a_backend_failing_every_call_writes_at_most_its_budget_and_then_says_how_many_it_left_out(caplog, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(call_errors.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(call_errors, "_budget", call_errors._Budget(rate_per_s=1.0, burst=2.0))
    with caplog.at_level(logging.ERROR, logger="adrank.calls"):
        for i in range(5):
            call_errors.log_call_error("ctr", 1, "", f"r{i}", "backend raised")
        now[0] += 1.0  # one more record's worth of budget
        call_errors.log_call_error("ctr", 1, "", "r5", "backend raised")
    records = [r for r in caplog.records if r.name == "adrank.calls"]
    assert [r.request_id for r in records] == ["r0", "r1", "r5"]
    assert records[-1].getMessage().endswith("(3 more not logged since the last)")
    assert records[0].tenant == "default" and not records[0].getMessage().endswith(")")
