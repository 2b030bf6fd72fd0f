"""JSON and JSONL files: written atomically (a reader, or a crash, never sees half a file) and
read with every bad line named (`FileError`)."""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from rlhf_exp.errors import UserError


class FileError(UserError):
    """A bad input file; `problems` holds one sentence per bad line or field."""

    def __init__(self, source: str, problems: list[str], unit: str = "line"):
        self.source, self.problems = str(source), problems
        shown = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} bad {unit}(s); nothing was written\n{shown}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to, renamed over `path` when the block completes; on
    an error the temporary file is removed and `path` is left as it was."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator:
    """A text file written atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        yield fh


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    path = Path(path)
    with _atomic(path) as fh:
        fh.write(text)
    return path


def _jsonable(obj):
    """Objects that know their JSON form (`to_json()`, e.g. a conversation prompt)."""
    if hasattr(obj, "to_json"):
        return obj.to_json()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """One JSON object per line, atomically, streamed row by row."""
    path = Path(path)
    with _atomic(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
    return path


def write_parquet(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Rows as a Parquet dataset (what `datasets.load_dataset("parquet", ...)` reads), atomically;
    every key of any row is a column (null where a row lacks it)."""
    import datasets
    datasets.disable_progress_bars()
    path = Path(path)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = datasets.Dataset.from_dict({k: [row.get(k) for row in rows] for k in keys})
    with atomic_path(path) as tmp:
        table.to_parquet(str(tmp))
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def open_input(path: str | os.PathLike):
    """An input file opened for reading its lines as bytes (each decoded and checked by
    `json_objects`), or a FileError that it is missing (with the path resolved)."""
    path = Path(path)
    if not path.is_file():
        raise FileError(str(path), [f"no such file (resolved to {path.resolve()})"])
    return path.open("rb")


def json_objects(lines: Iterable[str | bytes], problems: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each JSON object line; blank lines skipped, bad ones (not UTF-8,
    not JSON, not an object, holding NaN or Infinity, or nested too deeply) added to `problems`."""
    for lineno, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append(f"line {lineno}: not UTF-8 text (byte {line[err.start]:#04x} at column {err.start + 1})")
                continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=_no_constant, parse_float=_finite)
        except json.JSONDecodeError as err:
            problems.append(f"line {lineno}: bad JSON ({err.msg} at column {err.colno})")
            continue
        except ValueError as err:
            problems.append(f"line {lineno}: {err}")
            continue
        except RecursionError:
            problems.append(f"line {lineno}: nested too deeply (expected a JSON object of strings, lists and numbers)")
            continue
        if not isinstance(obj, dict):
            problems.append(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
            continue
        yield lineno, obj


def read_json(path: str | os.PathLike):
    """A whole JSON document (e.g. a labeling tool's export), or a FileError naming where it is bad."""
    with open_input(path) as fh:
        raw = fh.read()
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except UnicodeDecodeError as err:
        raise FileError(str(path), [f"not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start})"]) from err
    except json.JSONDecodeError as err:
        raise FileError(str(path), [f"line {err.lineno}: bad JSON ({err.msg} at column {err.colno})"]) from err
    except ValueError as err:
        raise FileError(str(path), [str(err)]) from err
    except RecursionError:
        raise FileError(str(path), ["nested too deeply (expected a JSON document of objects, lists and "
                                    "values)"]) from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number (expected a finite number)")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number (expected a finite number)")


def read_jsonl(path: str | os.PathLike, parse: Callable[[dict, list[str]], object]) -> list:
    """Every line of a JSONL file through `parse(obj, problems)`, which returns a record or adds
    sentences to `problems`; raises one FileError naming every bad line, or that the file is
    missing or empty."""
    records, problems = [], []
    with open_input(path) as fh:
        for lineno, obj in json_objects(fh, problems):
            line_problems: list[str] = []
            record = parse(obj, line_problems)
            problems += [f"line {lineno}: {p}" for p in line_problems]
            if not line_problems:
                records.append(record)
    if problems:
        raise FileError(str(path), problems)
    if not records:
        raise FileError(str(path), ["no records: the file is empty"])
    return records


def shown(value, limit: int = 120) -> str:
    """A value as an error message shows it: its repr, cut at `limit` characters (a huge row is named,
    not echoed)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_str(obj: dict, key: str, problems: list[str]) -> None:
    if key not in obj:
        problems.append(f"field '{key}': missing (expected a string)")
    elif not isinstance(obj[key], str):
        problems.append(f"field '{key}': expected a string, got {type(obj[key]).__name__}")

