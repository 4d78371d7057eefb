"""Which partitions a stream worker holds, in a file the supervisor and the tests read.

Each worker of a consumer group rewrites its file on every assignment (a rebalance replaces the
whole set), so the files of a county's workers say how the group split its partitions."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_assignment(path: Path, held: list[tuple[str, int]]) -> None:
    """Replace `path` by the JSON list of the [topic, partition] pairs a worker holds, at once
    (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps([list(tp) for tp in held]))
    os.replace(tmp, path)


def read_assignment(path: Path) -> list[tuple[str, int]] | None:
    """What `write_assignment` wrote (None: nothing yet; an older worker's empty file: [])."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return [(str(t), int(p)) for t, p in json.loads(text or "[]")]
