"""A YAML file read into a pydantic schema in one step, with errors that name the file and the field.

Every configuration file adrank reads (a model's config.yaml, the tenants file) is refused whole when any
field is wrong: the error says `<file>: <field.path>: <what is wrong>` for each problem, and nothing of the
file is used. A file that is not YAML says so in one line too, with where the parser stopped (`yaml_problem`):
the error ends up as one `Error:` line of a command, or one log line. Reading is pure: one file, no side effects.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Schema = TypeVar("Schema", bound=BaseModel)

# libyaml's parser where PyYAML was built with it (the wheels are), else PyYAML's own in pure Python. The server's
# repository watcher parses every model's config.yaml and rollout.yaml at each poll while holding the GIL, which a
# batch needs twice: the pure-Python parser took 13 ms of CPU a poll of the two bundled models (12 of them parsing),
# libyaml's a tenth of that (0.27 against 2.9 ms for ctr's config.yaml), on a 2-core EPYC.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def field_path(location: tuple[int | str, ...]) -> str:
    """pydantic's error location as a path: `batching.preferred_batch_rows[1]`."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error in one line (PyYAML's spans several, with the offending line quoted): what, and where."""
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not YAML: {problem}{where}"


def parse_yaml(text: str) -> object:
    """The YAML document `text` as plain Python (safe types only); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_LOADER)  # a safe loader: plain data only


def read_yaml(path: Path, schema: type[Schema], error: type[ValueError]) -> Schema:
    """The file parsed and validated as `schema`; `error` (a ValueError subclass) names the file and fields."""
    try:
        text = path.read_text()
    except OSError as cause:
        raise error(f"{path}: cannot read: {cause.strerror or cause}") from cause
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as cause:
        raise error(f"{path}: {yaml_problem(cause)}") from cause
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping of fields, got {type(raw).__name__}")
    try:
        return schema.model_validate(raw)
    except ValidationError as cause:
        problems = "; ".join(f"{field_path(e['loc'])}: {e['msg']}" for e in cause.errors())
        raise error(f"{path}: {problems}") from cause
