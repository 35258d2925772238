"""Rules that apply on Windows only, switched on here: CI runs on Linux, and these decide what
an archive made there holds and what an operator is told.  Each switch is the module's own
flag or input, not a mock of the system: the code under test runs as it would there."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from backup_core import hooks
from backup_core.sources import walk
from backup_core.zip import packing

_REPARSE_POINT = 0x400
_MOUNT_POINT = 0xA0000003
_CLOUD = 0x9000001A  # IO_REPARSE_TAG_CLOUD: a OneDrive folder whose files may be online only


@pytest.mark.parametrize(
    ("attributes", "tag", "listed_as_junction", "junction"),
    [
        (_REPARSE_POINT, _MOUNT_POINT, False, True),  # a junction
        (_REPARSE_POINT, _CLOUD, False, False),  # a OneDrive folder: walked, not archived as a link
        (0, 0, False, False),  # an ordinary folder
        (_REPARSE_POINT, None, True, True),  # no tag known: the listing's own word
    ],
)
def test_only_a_mount_point_reparse_tag_makes_a_folder_a_junction(
    attributes: int, tag: int | None, listed_as_junction: bool, junction: bool
) -> None:
    # Every reparse-point folder was taken for a junction: a OneDrive folder became a "link"
    # whose target could not be read, and the target failed.
    st = SimpleNamespace(st_file_attributes=attributes, **({} if tag is None else {"st_reparse_tag": tag}))
    entry = SimpleNamespace(is_junction=lambda: listed_as_junction)
    assert walk._is_junction(entry, st) is junction  # type: ignore[arg-type]


def _recorded_mode(mode: int) -> int:
    record = packing.central_header(b"a", False, 0, 1_700_000_000.0, 0, 0, 0, 0, mode)
    return struct.unpack_from("<L", record, 38)[0] >> 16


@pytest.mark.parametrize(
    ("mode", "recorded"),
    [(stat.S_IFREG | 0o666, stat.S_IFREG | 0o644), (stat.S_IFDIR | 0o777, stat.S_IFDIR | 0o755),
     (stat.S_IFREG | 0o444, stat.S_IFREG | 0o444)],
)  # fmt: skip
def test_windows_modes_are_recorded_writable_by_their_owner_only(
    monkeypatch: pytest.MonkeyPatch, mode: int, recorded: int
) -> None:
    # Windows reports 0666 and 0777: restored on Linux, an archive made there was writable by all.
    monkeypatch.setattr(packing, "_WRITABLE_BY_OWNER_ONLY", ~0o022)
    assert _recorded_mode(mode) == recorded
    monkeypatch.setattr(packing, "_WRITABLE_BY_OWNER_ONLY", ~0)  # elsewhere: the file's own mode
    assert _recorded_mode(stat.S_IFREG | 0o666) == stat.S_IFREG | 0o666


def test_the_recorded_mode_is_what_a_zip_reader_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packing, "_WRITABLE_BY_OWNER_ONLY", ~0o022)
    record = packing.central_header(b"a.txt", False, 0, 1_700_000_000.0, 0, 0, 0, 0, stat.S_IFREG | 0o666)
    local = packing.local_header(b"a.txt", False, 0, 1_700_000_000.0, 0, 0, 0)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(record), len(local), 0)
    with zipfile.ZipFile(io.BytesIO(local + record + end)) as archive:
        assert archive.getinfo("a.txt").external_attr >> 16 == stat.S_IFREG | 0o644


def test_a_hook_line_that_is_not_utf8_is_read_in_the_systems_code_page(monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoded as UTF-8 with replacement, "fermé" in cp1252 came out "ferm\ufffd"; and one stray
    # byte anywhere in the last 4 KiB garbled the line shown, which is now decoded alone.
    monkeypatch.setattr(hooks.locale, "getpreferredencoding", lambda do_setlocale=True: "cp1252")
    output = io.BytesIO(b"\xff earlier noise\r\nd\xe9p\xf4t ferm\xe9\r\n")
    assert hooks._last_line(output) == "dépôt fermé"
    assert hooks._last_line(io.BytesIO(b"\xff noise\nd\xc3\xa9p\xc3\xb4t ferm\xc3\xa9\n")) == "dépôt fermé"


def test_a_hook_line_cut_inside_a_character_at_the_4_kib_mark_is_still_utf8() -> None:
    # The last 4 KiB began inside "é": the line failed strict UTF-8 and was read in the code page.
    line = "é" * 3000  # 6,000 bytes: the read starts at an odd byte, inside a character
    assert hooks._last_line(io.BytesIO((line + "\n").encode())) == "é" * 200


@pytest.mark.parametrize(
    ("arguments", "secret"),
    [
        # PowerShell's curl is Invoke-WebRequest: on Windows one types curl.exe.
        (("C:\\tools\\curl.exe", "-u", "admin:s3cret", "https://x"), "s3cret"),
        (("cmd", "/c", "mysqldump", "-ps3cret", "db"), "s3cret"),  # the program behind a wrapper
        (("C:\\Program Files\\MySQL\\bin\\MYSQLDUMP.EXE", "-ps3cret"), "s3cret"),
        (("sqlcmd", "-U", "sa", "-P", "s3cret", "-Q", "BACKUP DATABASE x"), "s3cret"),
    ],
)
def test_a_windows_program_path_or_wrapper_does_not_hide_a_password(arguments: tuple[str, ...], secret: str) -> None:
    from backup_core.manifest import redact

    assert secret not in redact.argv(arguments)
    assert secret not in redact.text(" ".join(f'"{a}"' if " " in a else a for a in arguments))


def test_windows_refuses_tilde_user_and_cmds_percent_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # ~nosuch became C:\Users\nosuch (guessed from this user's folder) and was created;
    # %ProgramData% made a folder of that name beside the manifest.
    from backup_core.errors import ManifestError
    from backup_core.manifest import load, variables

    monkeypatch.setattr(variables, "FOLD_CASE", True)
    manifest = tmp_path / "backups.yml"
    manifest.write_text(
        "version: 1\ntargets:\n  - {name: a, path: src, destination: '~bob/out'}\n"
        "  - {name: b, path: src, destination: '%ProgramData%/out'}\n",
        encoding="utf-8",
    )
    with pytest.raises(ManifestError) as caught:
        load(manifest, environ={})
    said = [str(p) for p in caught.value.problems]
    assert any("~bob is not supported on Windows; write the path in full" in p for p in said), said
    assert any("'%ProgramData%' is not a variable this tool expands" in p for p in said), said
