"""A tiny application that writes to an SQLite database without pause, to try backups against.

    python examples/hit_counter.py /tmp/demo/data.db &
    # point a target at /tmp/demo/data.db, then run `make backup` as often as you like;
    # every archive restores (`invoke restore`) to a database holding every counted hit.

It commits one hit per transaction in WAL mode, the way a web application's hit
counter would, and prints the number of hits committed every second.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
from pathlib import Path


def main(database: Path) -> None:
    database.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, page TEXT, at REAL)")
    connection.execute("CREATE TABLE IF NOT EXISTS totals (page TEXT PRIMARY KEY, count INTEGER)")
    last_report = time.monotonic()
    hits = 0
    while True:
        page = f"/page/{hits % 10}"
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO hits (page, at) VALUES (?, ?)", (page, time.time()))
        connection.execute(
            "INSERT INTO totals VALUES (?, 1) ON CONFLICT(page) DO UPDATE SET count = count + 1", (page,)
        )
        connection.execute("COMMIT")
        hits += 1
        if time.monotonic() - last_report >= 1:
            print(f"{hits} hits committed", flush=True)
            last_report = time.monotonic()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/hit_counter.py DATABASE")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it is meant to stop
        main(Path(sys.argv[1]))
