"""The baseline: archive a folder exactly as the original backup script did.

Before this tool, backups were made by a 40-line script.  Its archiving step,
kept here unchanged so the benchmark compares against what operators really
ran: Python's `zipfile`, every path that `Path.glob("**/*")` yields added with
`ZipFile.write` as a deflated member at zlib's default level, on one core,
written straight into the final file (no temporary file, no fsync).

Usage: python original_script.py SOURCE_FOLDER ARCHIVE
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def archive(source: Path, destination: Path) -> None:
    with zipfile.ZipFile(destination, "w") as bundle:
        for path in source.glob("**/*"):
            bundle.write(path, path.relative_to(source).as_posix(), zipfile.ZIP_DEFLATED)


def main(arguments: list[str]) -> int:
    if len(arguments) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    archive(Path(arguments[0]), Path(arguments[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
