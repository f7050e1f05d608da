"""Result files: checked against the schema in the repository before anything reads them."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("result.schema.json")
DATA_FILES = (SCHEMA_PATH,)


class ResultFileError(ValueError):
    """A result file is unreadable or does not follow result.schema.json; names the file."""


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def load_result(path: str | Path) -> dict[str, Any]:
    """The result at ``path``, validated; a broken or foreign file is refused with its path."""
    from jsonschema.exceptions import best_match

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultFileError(f"{path}: result file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultFileError(f"{path}: not a JSON result file ({exc})") from None
    error = best_match(_validator().iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise ResultFileError(f"{path}: not a parax-bench result file ({where}: {error.message})")
    return data
