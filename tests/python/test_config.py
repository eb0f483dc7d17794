"""config.yaml: a bad file is refused with a message naming the file and the field."""

from __future__ import annotations

import pytest

import adrank
from adrank.repository.config import ConfigError, ModelNameError, check_model_name, load_model_config

VALID = """
name: ctr
max_candidates: 100
inputs:
  - {name: dense, dtype: float32, shape: [13], role: candidate, allow_nonfinite: false}
  - {name: user, dtype: float32, shape: [4], role: context}
outputs:
  - {name: ctr, dtype: float32, range: [0.0, 1.0]}
batching: {max_batch_rows: 256, preferred_batch_rows: [64, 256], max_queue_delay_us: 100, max_batch_requests: 3,
  context_layout: broadcast}
instances: 2
"""


def write(tmp_path, text, model="ctr"):
    path = tmp_path / model / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_valid_config_becomes_the_core_signature_and_batcher_options(tmp_path):
    config = load_model_config(write(tmp_path, VALID))
    signature = config.core_signature()
    assert [(s.name, s.dtype, s.row_shape, s.role) for s in signature.inputs] == [
        ("dense", "float32", [13], adrank.Role.CANDIDATE),
        ("user", "float32", [4], adrank.Role.CONTEXT),
    ]
    options = config.batcher_options()
    assert (options.max_batch_rows, options.preferred_batch_rows, options.max_request_rows) == (256, [64, 256], 100)
    assert options.max_batch_requests == 3
    assert config.batching.warmup_sizes() == [64, 256]
    assert config.instances == 2 and config.score_output == "ctr"


def test_a_text_input_reaches_the_core_as_a_row_of_utf8_bytes(tmp_path):
    text = VALID.replace(
        "  - {name: user, dtype: float32, shape: [4], role: context}",
        "  - {name: query, dtype: string, role: context, tokenizer: "
        "{file: tokenizer.json, max_length: 16, max_bytes: 64, input_ids: ids, attention_mask: mask}}",
    ).replace("context_layout: broadcast", "context_layout: per_request")
    signature = load_model_config(write(tmp_path, text)).core_signature()
    assert [(s.name, s.dtype, s.row_shape, s.role) for s in signature.inputs[1:]] == [
        ("query", "uint8", [64], adrank.Role.CONTEXT)
    ]
    # One text per request: a broadcast layout would tokenize it once per candidate.
    with pytest.raises(ConfigError, match="per_request"):
        load_model_config(write(tmp_path, text.replace("context_layout: per_request", "context_layout: broadcast")))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("dtype: float32, shape: [13]", "dtype: float33, shape: [13]"), "inputs[0].dtype"),
        (("shape: [13]", "shape: [0]"), "inputs[0]"),
        (("instances: 2", "instances: 0"), "instances"),
        (("max_batch_requests: 3", "max_batch_requests: -1"), "batching.max_batch_requests"),
        (("instances: 2", "instance: 2"), "instance"),
        (("preferred_batch_rows: [64, 256]", "preferred_batch_rows: [256, 64]"), "batching"),
        (("max_queue_delay_us: 100", "max_queue_delay_us: -1"), "batching.max_queue_delay_us"),
        (("{name: ctr, dtype: float32, range", "{name: ctr, dtype: int64, range"), "(top level)"),
        (
            (
                "role: context}",
                "role: context, allow_nonfinite: false, tokenizer: null}\n  - {name: user, dtype: int8}",
            ),
            "(top level)",
        ),
        (("name: ctr\n", "name: other\n"), "name"),
        (("role: candidate, allow", "role: context, allow"), "(top level)"),
    ],
)
def test_a_bad_config_is_refused_naming_the_file_and_the_field(tmp_path, change, field):
    old, new = change
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(ConfigError) as error:
        load_model_config(path)
    message = str(error.value)
    assert str(path) in message
    assert field in message, message


def test_unreadable_yaml_is_refused_naming_the_file(tmp_path):
    path = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError) as refused:
        load_model_config(path)
    # one line (PyYAML's own message spans four), naming the file and where the parser (libyaml's) stopped
    assert str(refused.value) == f"{path}: not YAML: did not find expected ',' or ']' at line 2, column 1"
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_model_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_model_config(write(tmp_path, "- a list\n"))


@pytest.mark.parametrize("name", ["ctr", "ctr-v2", "ctr_2", "ctr.eu", "2025ctr", "C"])
def test_a_model_name_is_letters_digits_and_underscore_dot_dash(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", ["", "../../x", "..", ".", "a/b", "/abs", ".hidden", "_ctr", "-ctr", "ctr x", "c\n"])
def test_a_path_or_anything_else_is_not_a_model_name(name):
    with pytest.raises(ModelNameError, match="is not a model name"):
        check_model_name(name)


def test_a_config_whose_name_is_not_a_model_name_is_refused_naming_the_field(tmp_path):
    path = write(tmp_path, VALID.replace("name: ctr\n", "name: _ctr\n", 1), model="_ctr")
    with pytest.raises(ConfigError, match=r"config\.yaml: name: String should match pattern"):
        load_model_config(path)


def test_configuration_is_parsed_by_libyaml():
    # The pinned PyYAML wheel carries libyaml; without it every repository poll parses in pure Python, ten times
    # slower, while holding the GIL that the model workers need (config_file.py says why it matters).
    import yaml

    from adrank import config_file

    assert yaml.__with_libyaml__ and config_file.parse_yaml("a: [1, 2]") == {"a": [1, 2]}
    assert config_file._LOADER is yaml.CSafeLoader
