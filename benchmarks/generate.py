"""Deterministic benchmark data: a mixed tree, a folder of tiny files, an SQLite database, a sparse file.

Every byte comes from one seeded random generator, so two machines (and two runs)
benchmark the same data.  Generating is costly at 1 GiB, so a finished tree is
reused: a marker file beside it records the recipe (seed, size, generator
version) and is written last, so a tree whose generation was interrupted, or
that an older recipe made, is built again from scratch.

The mixed tree, by bytes:

* 40% text: logs, CSV exports and Markdown documents of 256 KiB to 8 MiB;
* 30% data that does not compress: half under the names of compressed formats
  (.jpg, .gz, .zip, ...), half under neutral names (.bin, .dat), where only
  trying to compress can tell;
* 20% in thousands of small files (1-16 KiB) in nested folders, three in four
  of them text;
* 10% in three large files: an SQL dump, a video and a disk image that
  alternates text and random extents.

Text is drawn line by line from pools of lines made up front (log lines from a
vocabulary of words, timestamps, ids and durations; CSV rows; sentences): whole
lines are chosen at random, so text is varied like real logs, compresses to
about a third of its size with deflate, and costs little to produce.
"""

from __future__ import annotations

import json
import operator
import os
import random
import shutil
import sqlite3
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import reduce
from pathlib import Path

# Bump when the recipe changes: trees made by an older generator are then rebuilt.
GENERATOR_VERSION = 1

KIB = 1 << 10
MIB = 1 << 20
_PIECE = 4 * MIB  # large files are written in pieces of this size, so memory stays small
_SMALL_PER_FOLDER = 50
_TINY_PER_FOLDER = 100

_VOCABULARY = """
    request response user session cache database query index table row column server client connection
    timeout retry error warning handler worker queue job task scheduler backup archive file folder path
    read write open close sync flush commit rollback lock started finished failed succeeded skipped
    pending running stopped restarted deployed configured upload download token login logout payment
    order invoice customer product price stock shipment address email notification message event metric
    latency throughput memory disk network packet socket port host service cluster node replica shard
    partition leader follower election heartbeat checkpoint snapshot segment compaction migration
    schema version release build artifact pipeline stage deploy rollout canary feature flag toggle
    tenant account quota limit rate burst window bucket region zone mirror proxy gateway route
    certificate renewal expired valid invalid denied granted permission role group policy audit
    alpha beta gamma delta sigma omega north south east west amber azure coral ivory jade olive
    garden harbor island meadow canyon river summit valley forest desert glacier prairie tundra
    monday tuesday wednesday thursday friday saturday sunday january february march april june
    parser lexer compiler linker loader kernel driver module plugin adapter bridge factory builder
    encoder decoder buffer stream channel signal thread process fiber coroutine mutex semaphore
    """
_WORDS = _VOCABULARY.split()
_LEVELS = ["INFO"] * 6 + ["DEBUG"] * 3 + ["WARN", "ERROR"]
_COMPONENTS = [
    "api.http", "db.pool", "auth", "scheduler", "worker", "cache", "billing", "mailer", "storage",
    "ingest", "search", "gateway", "metrics", "sync", "export",
]  # fmt: skip
_STATUSES = [200, 200, 200, 201, 204, 301, 304, 400, 401, 403, 404, 409, 429, 500, 502, 503]
_COMPRESSED_SUFFIXES = [".jpg", ".png", ".gz", ".zip", ".mp4", ".webp", ".zst"]
_NEUTRAL_SUFFIXES = [".bin", ".dat", ".blob", ".cache"]


@dataclass(frozen=True)
class Built:
    """What a generated folder or file holds."""

    path: Path
    files: int
    folders: int
    bytes: int


# --- reuse ---------------------------------------------------------------------------------------


def _marker(path: Path) -> Path:
    # Beside the data, not inside it: a marker inside the tree would be archived with it.
    return path.with_name(path.name + ".json")


def _ensure(path: Path, recipe: dict[str, object], build: Callable[[Path], Built]) -> Built:
    """Reuse `path` when its marker records `recipe`; otherwise build it afresh and write the marker."""
    marker = _marker(path)
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict) and recorded.get("recipe") == recipe and path.exists():
        return Built(path, int(recorded["files"]), int(recorded["folders"]), int(recorded["bytes"]))
    marker.unlink(missing_ok=True)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    built = build(path)
    summary = {"recipe": recipe, **{k: v for k, v in asdict(built).items() if k != "path"}}
    marker.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return built


def _recipe(seed: int, **parameters: object) -> dict[str, object]:
    return {"generator": GENERATOR_VERSION, "seed": seed, **parameters}


# --- text ----------------------------------------------------------------------------------------


class _Text:
    """Pools of pre-made lines, and text drawn from them a whole line at a time."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        # A line is one choice from each of its kind's pools, concatenated: a log line is a
        # prefix (time, level, component) and a message, so 8,192 prefixes and 16,384 messages
        # make 134 million different lines.
        self._kinds: dict[str, list[list[str]]] = {
            "log": [[self._log_prefix() for _ in range(8192)], [self._log_message() for _ in range(16384)]],
            "csv": [[self._csv_key() for _ in range(8192)], [self._csv_values() for _ in range(16384)]],
            "md": [[self._sentence() + " " for _ in range(8192)], [self._sentence() + "\n" for _ in range(8192)]],
        }
        self._line_length = {
            kind: sum(sum(map(len, pool)) / len(pool) for pool in pools) for kind, pools in self._kinds.items()
        }

    def draw(self, kind: str, size: int) -> bytes:
        """`size` bytes of text of `kind` (log, csv or md)."""
        pools = self._kinds[kind]
        count = int(size / self._line_length[kind]) + 2
        columns = [iter(self._rng.choices(pool, k=count)) for pool in pools]
        lines: Iterator[str] = reduce(lambda joined, column: map(operator.add, joined, column), columns)
        text = "".join(lines)
        while len(text) < size:  # the estimate fell short: rare, and only by a line or two
            text += self.draw(kind, size - len(text)).decode("ascii")
        return text[:size].encode("ascii")

    # The pools. Numbers vary per line, as ids and durations do in real logs.

    def _word(self) -> str:
        return self._rng.choice(_WORDS)

    def _field(self) -> str:
        rng = self._rng
        return rng.choice(
            [
                f"id={rng.randrange(1, 10**7)}",
                f"{rng.randrange(5000)}ms",
                f"status={rng.choice(_STATUSES)}",
                f"user={self._word()}{rng.randrange(1000)}",
                f"trace=0x{rng.getrandbits(48):012x}",
                f"bytes={rng.randrange(10**6)}",
            ]
        )

    def _log_prefix(self) -> str:
        rng = self._rng
        stamp = (
            f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
            f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z"
        )
        return f"{stamp} {rng.choice(_LEVELS):5} [{rng.choice(_COMPONENTS)}] "

    def _log_message(self) -> str:
        parts = [self._word() for _ in range(self._rng.randrange(4, 13))]
        for _ in range(self._rng.randrange(1, 5)):
            parts.insert(self._rng.randrange(len(parts) + 1), self._field())
        return " ".join(parts) + "\n"

    def _csv_key(self) -> str:
        rng = self._rng
        return f"{rng.randrange(10**8)},2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d},"

    def _csv_values(self) -> str:
        rng = self._rng
        return (
            f"{self._word()}-{rng.randrange(10**4)},{self._word()} {self._word()},{rng.randrange(1, 50)},"
            f"{rng.randrange(100, 10**6) / 100:.2f},{rng.choice(['paid', 'open', 'refunded', 'void'])}\n"
        )

    def _sentence(self) -> str:
        words = [self._word() for _ in range(self._rng.randrange(6, 18))]
        return " ".join(words).capitalize() + self._rng.choice([".", ".", ".", "?", ";", ":"])


# --- the mixed tree ------------------------------------------------------------------------------


def ensure_tree(work: Path, size_mib: int, seed: int) -> Built:
    """The mixed tree of about `size_mib` MiB in work/tree-<size>, generated unless already there."""
    path = work / f"tree-{size_mib}"
    return _ensure(path, _recipe(seed, size_mib=size_mib), lambda p: _TreeBuilder(p, seed).build(size_mib * MIB))


class _TreeBuilder:
    def __init__(self, root: Path, seed: int) -> None:
        self._root = root
        self._rng = random.Random(seed)
        self._text = _Text(self._rng)
        self._folders: set[Path] = set()  # made already: spares a mkdir per file

    def build(self, total: int) -> Built:
        text, incompressible, small = int(total * 0.4), int(total * 0.3), int(total * 0.2)
        large = total - text - incompressible - small
        self._text_files(text)
        self._incompressible_files(incompressible)
        self._small_files(small)
        self._large_files(large)
        return survey(self._root)

    def _text_files(self, budget: int) -> None:
        folders = {"log": "logs/app", "csv": "data/exports", "md": "docs/handbook"}
        for number, size in enumerate(self._sizes(budget, 256 * KIB, 8 * MIB)):
            kind = self._rng.choice(["log", "log", "csv", "md"])  # logs dominate real servers' text
            self._write(f"{folders[kind]}/{kind}-{number:04d}.{kind}", self._text_pieces(kind, size))

    def _incompressible_files(self, budget: int) -> None:
        for number, size in enumerate(self._sizes(budget, 256 * KIB, 16 * MIB)):
            if number % 2 == 0:
                name = f"media/{number // 20:02d}/item-{number:04d}{self._rng.choice(_COMPRESSED_SUFFIXES)}"
            else:
                name = f"blobs/{number // 20:02d}/object-{number:04d}{self._rng.choice(_NEUTRAL_SUFFIXES)}"
            self._write(name, self._random_pieces(size))

    def _small_files(self, budget: int) -> None:
        suffixes = {"log": ".log", "csv": ".csv", "md": ".md"}
        for number, size in enumerate(self._sizes(budget, 1 * KIB, 16 * KIB)):
            folder = number // _SMALL_PER_FOLDER
            parent = f"src/pkg-{folder // 20:03d}/mod-{folder % 20:02d}"
            if self._rng.random() < 0.75:
                kind = self._rng.choice(list(suffixes))
                self._write(f"{parent}/file-{number:06d}{suffixes[kind]}", [self._text.draw(kind, size)])
            else:  # icons, thumbnails, small binary caches
                suffix = self._rng.choice([".png", ".bin"])
                self._write(f"{parent}/file-{number:06d}{suffix}", [self._rng.randbytes(size)])

    def _large_files(self, budget: int) -> None:
        third = budget // 3
        self._write("large/dump.sql", self._text_pieces("csv", third))
        self._write("large/video.mp4", self._random_pieces(third))
        self._write("large/disk.img", self._mixed_pieces(budget - 2 * third))

    # --- contents, as pieces so a large file is never whole in memory

    def _text_pieces(self, kind: str, size: int) -> Iterator[bytes]:
        for offset in range(0, size, _PIECE):
            yield self._text.draw(kind, min(_PIECE, size - offset))

    def _random_pieces(self, size: int) -> Iterator[bytes]:
        for offset in range(0, size, _PIECE):
            yield self._rng.randbytes(min(_PIECE, size - offset))

    def _mixed_pieces(self, size: int) -> Iterator[bytes]:
        # Extents of text and random data in turn, as in a filesystem image.
        for number, offset in enumerate(range(0, size, _PIECE)):
            length = min(_PIECE, size - offset)
            yield self._text.draw("log", length) if number % 2 == 0 else self._rng.randbytes(length)

    def _sizes(self, budget: int, low: int, high: int) -> Iterator[int]:
        """File sizes between `low` and `high` (log-uniform: many smaller, some larger) adding up to `budget`."""
        while budget > 0:
            size = min(budget, int(low * (high / low) ** self._rng.random()))
            budget -= size
            yield size

    def _write(self, name: str, pieces: Iterator[bytes] | list[bytes]) -> None:
        path = self._root / name
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        with path.open("wb") as file:
            for piece in pieces:
                file.write(piece)


# --- the second mixed tree ----------------------------------------------------------------------


def ensure_second_tree(work: Path, size_mib: int, seed: int) -> Built:
    """Another mixed tree of about `size_mib` MiB in work/second-<size>, built by other rules.

    A speed goal that holds on one tree may only fit that tree, so this one differs in every
    proportion, by bytes: 35% in small files (256 B to 64 KiB, 30 to a folder, nested four
    deep: source code, configuration, thumbnails), 20% text in mid-sized files (64 KiB to
    2 MiB, many CSV and JSON-like lines), 20% binaries that compress partly (programs and
    libraries: runs of zeros, tables and random code), 25% already compressed (real gzip
    streams of text under .gz, and random data under .jpg, .png, .zip and .mp4), and no very
    large file.
    """
    path = work / f"second-{size_mib}"
    return _ensure(
        path, _recipe(seed, size_mib=size_mib, tree="second"), lambda p: _SecondTree(p, seed).build(size_mib * MIB)
    )


class _SecondTree(_TreeBuilder):
    def build(self, total: int) -> Built:
        small, text, binaries = int(total * 0.35), int(total * 0.2), int(total * 0.2)
        compressed = total - small - text - binaries
        self._small(small)
        self._mid_text(text)
        self._binaries(binaries)
        self._compressed(compressed)
        return survey(self._root)

    def _small(self, budget: int) -> None:
        for number, size in enumerate(self._sizes(budget, 256, 64 * KIB)):
            folder = number // 30
            parent = f"app/{folder // 400:02d}/{folder // 20 % 20:02d}/{folder % 20:02d}"
            roll = self._rng.random()
            if roll < 0.6:
                kind, suffix = self._rng.choice([("md", ".js"), ("csv", ".cfg"), ("log", ".txt"), ("md", ".html")])
                self._write(f"{parent}/s{number:07d}{suffix}", [self._text.draw(kind, size)])
            elif roll < 0.8:
                self._write(f"{parent}/s{number:07d}.png", [self._rng.randbytes(size)])
            else:
                self._write(f"{parent}/s{number:07d}.pyc", [self._binary(size)])

    def _mid_text(self, budget: int) -> None:
        for number, size in enumerate(self._sizes(budget, 64 * KIB, 2 * MIB)):
            kind = self._rng.choice(["csv", "csv", "log", "md"])
            suffix = {"csv": ".json", "log": ".log", "md": ".txt"}[kind]
            self._write(f"exports/{number // 50:03d}/x{number:05d}{suffix}", self._text_pieces(kind, size))

    def _binaries(self, budget: int) -> None:
        for number, size in enumerate(self._sizes(budget, 128 * KIB, 24 * MIB)):
            suffix = self._rng.choice([".so", ".bin", "", ".exe"])
            self._write(f"bin/{number // 40:02d}/prog{number:04d}{suffix}", self._binary_pieces(size))

    def _compressed(self, budget: int) -> None:
        for number, size in enumerate(self._sizes(budget, 32 * KIB, 12 * MIB)):
            if number % 3 == 0:
                # A real gzip stream of text: its bytes look compressed, whatever the name says.
                text = b"".join(self._text_pieces("log", size * 3))
                gz = zlib.compressobj(1, zlib.DEFLATED, 31)
                self._write(f"archive/{number // 30:02d}/logs-{number:05d}.gz", [gz.compress(text) + gz.flush()])
            else:
                suffix = self._rng.choice([".jpg", ".png", ".zip", ".mp4"])
                self._write(f"media/{number // 30:02d}/m{number:05d}{suffix}", self._random_pieces(size))

    def _binary(self, size: int) -> bytes:
        # A program's shape: zero padding, repeated tables, strings and random machine code.
        parts, left = [], size
        while left > 0:
            length = min(left, self._rng.randrange(256, 16 * KIB))
            roll = self._rng.random()
            if roll < 0.25:
                parts.append(bytes(length))
            elif roll < 0.45:
                row = self._rng.randbytes(16)
                parts.append((row * (length // 16 + 1))[:length])
            elif roll < 0.6:
                parts.append(self._text.draw("md", length))
            else:
                parts.append(self._rng.randbytes(length))
            left -= length
        return b"".join(parts)

    def _binary_pieces(self, size: int) -> Iterator[bytes]:
        for offset in range(0, size, _PIECE):
            yield self._binary(min(_PIECE, size - offset))


# --- tiny files ----------------------------------------------------------------------------------


def ensure_tiny_files(work: Path, count: int, seed: int) -> Built:
    """`count` files of 10-200 bytes, 100 to a folder and 100 folders to a parent, in work/tiny-<count>."""
    path = work / f"tiny-{count}"
    return _ensure(path, _recipe(seed, count=count), lambda p: _build_tiny(p, count, seed, _TINY_PER_FOLDER))


def ensure_many_files(work: Path, count: int, seed: int) -> Built:
    """`count` files of 10-200 bytes, 1,000 to a folder and 100 folders to a parent, in work/many-<count>."""
    path = work / f"many-{count}"
    return _ensure(path, _recipe(seed, count=count, per_folder=1000), lambda p: _build_tiny(p, count, seed, 1000))


def _build_tiny(root: Path, count: int, seed: int, per_folder: int) -> Built:
    rng = random.Random(seed)
    # One log text to cut the files from: drawing each tiny file separately would cost more
    # than writing it.
    source = _Text(rng).draw("log", 256 * KIB)
    width = len(str(per_folder - 1))
    folder = root
    for number in range(count):
        if number % per_folder == 0:
            group = number // per_folder
            folder = root / f"d{group // 100:03d}" / f"d{group % 100:02d}"
            folder.mkdir(parents=True)
        size = rng.randrange(10, 201)
        start = rng.randrange(len(source) - size)
        (folder / f"f{number % per_folder:0{width}d}.txt").write_bytes(source[start : start + size])
    return survey(root)


# --- an SQLite database --------------------------------------------------------------------------


def ensure_database(work: Path, size_mib: int, seed: int) -> Built:
    """An SQLite database of about `size_mib` MiB in WAL mode, in work/db-<size>.db."""
    path = work / f"db-{size_mib}.db"
    return _ensure(path, _recipe(seed, size_mib=size_mib), lambda p: _build_database(p, size_mib * MIB, seed))


def _build_database(path: Path, size: int, seed: int) -> Built:
    for companion in ("-wal", "-shm"):  # left by an older database: SQLite would try to use them
        Path(f"{path}{companion}").unlink(missing_ok=True)
    rng = random.Random(seed)
    text = _Text(rng)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, created TEXT NOT NULL, kind TEXT NOT NULL,"
            " body TEXT NOT NULL, payload BLOB)"
        )
        connection.execute("CREATE INDEX events_created ON events (created)")
        next_id = 1
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        # The page count includes pages still in the WAL, so this is the size after the checkpoint.
        while connection.execute("PRAGMA page_count").fetchone()[0] * page_size < size:
            rows = []
            for _ in range(2000):
                body = text.draw("log", rng.randrange(200, 3000)).decode("ascii")
                payload = rng.randbytes(rng.randrange(0, 2048)) if rng.random() < 0.5 else None
                rows.append((next_id, body[:24], rng.choice(_COMPONENTS), body, payload))
                next_id += 1
            connection.execute("BEGIN")
            connection.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
            connection.execute("COMMIT")
        # Fold the WAL into the database so its size is the database's, as on a quiet server.
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return Built(path, 1, 0, path.stat().st_size)


# --- a sparse file -------------------------------------------------------------------------------


def ensure_sparse_file(work: Path, size_gib: int) -> Built:
    """A sparse file of `size_gib` GiB (all zeros, almost no disk space), in work/sparse-<size>.img."""
    path = work / f"sparse-{size_gib}.img"
    size = size_gib << 30
    if not path.is_file() or path.stat().st_size != size:
        work.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as file:
            file.truncate(size)
    return Built(path, 1, 0, size)


def survey(root: Path) -> Built:
    """Count the regular files, folders and bytes under `root`."""
    files = folders = total = 0
    for folder, subfolders, names in os.walk(root):
        folders += len(subfolders)
        files += len(names)
        total += sum((Path(folder) / name).stat().st_size for name in names)
    return Built(root, files, folders, total)
