"""The benchmark's floor: read every file of a folder in 1 MiB blocks and throw the data away.

No archiver can be faster than reading its input, so this is the line the
others are measured against.  It reads into one reused buffer on one core.
(`tar cf - . > /dev/null` is no substitute: GNU tar notices /dev/null and skips
reading the files.)

Usage: python -m benchmarks.read_tree FOLDER
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BLOCK = 1 << 20


def read_tree(root: Path) -> int:
    """Read every regular file under `root`; return the bytes read."""
    buffer = bytearray(BLOCK)
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with (Path(folder) / name).open("rb", buffering=0) as file:
                while count := file.readinto(buffer):
                    total += count
    return total


def main(arguments: list[str]) -> int:
    if len(arguments) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    read_tree(Path(arguments[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
