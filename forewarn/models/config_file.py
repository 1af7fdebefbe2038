"""Load a YAML file into a pydantic model, refusing bad files with file, line and field.

>>> from pydantic import BaseModel
>>> class Budget(BaseModel):
...     per_day: int
>>> try:
...     load_yaml_text("per_day: lots\\n", Budget, "budget.yaml")
... except ConfigFileError as e:
...     print(e.problems[0])
budget.yaml:1:10: per_day: Input should be a valid integer, unable to parse string as an integer
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from forewarn.errors import ForewarnError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        at = f":{self.line}:{self.column}" if self.line else ""  # line 0: the file as a whole
        return f"{self.file}{at}: {where}{self.message}"


class ConfigFileError(ForewarnError, ValueError):
    """A configuration file was refused; ``problems`` says where and why."""

    headline = "refused configuration:\n"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        if len(problems) == 1 and not problems[0].line:  # e.g. a missing file: one line
            self.headline = ""
        super().__init__("\n".join(str(p) for p in problems))


def _locate(node: yaml.Node | None, loc: tuple[int | str, ...]) -> yaml.Node | None:
    """The deepest YAML node along a pydantic error location."""
    found = node
    for part in loc:
        if isinstance(found, yaml.MappingNode):
            nxt = next((v for k, v in found.value if k.value == part), None)
            if nxt is None:
                # A missing key: point at the mapping that should hold it.
                return found
            found = nxt
        elif isinstance(found, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(found.value):
                return found
            found = found.value[part]
        else:
            return found
    return found


def problems_from(
    error: ValidationError, root: yaml.Node | None, file: str, prefix: tuple[int | str, ...] = ()
) -> list[Problem]:
    out = []
    for err in error.errors():
        loc = prefix + tuple(err["loc"])
        node = _locate(root, loc)
        line = node.start_mark.line + 1 if node is not None else 1
        col = node.start_mark.column + 1 if node is not None else 1
        field = ".".join(str(p) for p in loc)
        out.append(Problem(file, line, col, field, err["msg"]))
    return out


def first_error(error: ValidationError) -> str:
    """The first problem of a validation error as ``field.path: message``."""
    err = error.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def parse_yaml(text: str, file: str) -> tuple[Any, yaml.Node | None]:
    """The data and the node tree (for positions) of a YAML document."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigFileError([Problem(file, line, col, "", f"not valid YAML: {e.problem}")]) from e
    except (yaml.YAMLError, RecursionError) as e:  # e.g. nesting deeper than Python recurses
        raise ConfigFileError([Problem(file, 1, 1, "", f"not valid YAML: {e}")]) from e
    return data, root


def load_yaml_text(text: str, model: type[M], file: str) -> M:
    data, root = parse_yaml(text, file)
    if not isinstance(data, dict):
        raise ConfigFileError([Problem(file, 1, 1, "", "expected a mapping at the top level")])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigFileError(problems_from(e, root, file)) from e


def read_text_file(path: Path) -> str:
    """A UTF-8 text file, or a ``ConfigFileError`` naming the file (and the line and column
    of a byte that is not UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError as e:  # missing, a directory, no permission, vanished
        why = f"cannot read: {e.strerror or e}"
        raise ConfigFileError([Problem(str(path), 0, 0, "", why)]) from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        why = f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}"
        raise ConfigFileError([Problem(str(path), line, col, "", why)]) from e


def load_yaml_file(path: Path, model: type[M]) -> M:
    return load_yaml_text(read_text_file(path), model, str(path))
