"""Invoke tasks of this checkout: the tasks of the installed `backups` command, with the
manifest beside this file (backups.yml) as the default.  They are defined in backup_core.cli."""

from pathlib import Path

from backup_core.cli import namespace

namespace.configure({"backups": {"manifest": str(Path(__file__).resolve().parent / "backups.yml")}})
ns = namespace
