"""`make bench`: every benchmark on PostgreSQL + Redis, each figure next to its same-run reference."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import backlog, e2e, fulfil, ingest  # noqa: E402


def main() -> None:
    print("== ingest ==")
    ingest.main([])
    print("\n== fulfil ==")
    fulfil.main([])
    print("\n== end-to-end ==")
    e2e.main([])
    print("\n== backlog ==")
    backlog.main([])


if __name__ == "__main__":
    main()
