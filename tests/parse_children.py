"""Parse processes that misbehave on purpose, for tests/test_parsepool.py.

    python tests/parse_children.py MODE

* ``marked``: parses as the real child does, but titles each page ``child PID``;
* ``die-on-kill``: the real child, except that a body containing ``KILL`` kills it;
* ``never-ready``: exits at once, before saying it is ready;
* ``slow``: the real child, half a second per page.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's crawler

import crawler._parsechild as child
from crawler._links import parse_html


def main(mode: str) -> None:
    if mode == "never-ready":
        os._exit(3)
    real = parse_html

    def parse(body: bytes, url: str, content_type: str | None, **limits: int):  # type: ignore[no-untyped-def]
        if mode == "die-on-kill" and b"KILL" in body:
            os._exit(4)
        if mode == "slow":
            time.sleep(0.5)
        parsed = real(body, url, content_type, **limits)
        if mode == "marked":
            parsed = dataclasses.replace(parsed, title=f"child {os.getpid()}")
        return parsed

    child.parse_html = parse  # type: ignore[attr-defined]
    child.serve()


if __name__ == "__main__":
    main(sys.argv[1])
