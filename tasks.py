"""Invoke tasks of this checkout: the tasks of the installed `backups` command, with the
manifest beside this file (backups.yml) as the default.  They are defined in backup_core.cli."""

import os
from pathlib import Path

from backup_core.cli import namespace
from backup_core.errors import PROGRAM_VARIABLE

os.environ[PROGRAM_VARIABLE] = "invoke"  # advice in messages names `invoke ...`, even under a `backups` run's hook

namespace.configure({"backups": {"manifest": str(Path(__file__).resolve().parent / "backups.yml")}})
ns = namespace
