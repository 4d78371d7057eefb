"""Reading a county's TOML file into its configuration (the domain builds it; this reads it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from domain.county import County, CountyConfigError
from domain.county_config import parse_county


def load_county(path: str | Path) -> County:
    """Read and validate a county TOML file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CountyConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise CountyConfigError(f"{path.name}: not valid TOML: {exc}") from None
    return parse_county(doc, path.name)
