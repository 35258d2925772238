"""The manifest: reading backups.yml, checking it against the schema, resolving its targets."""

from backup_core.manifest.loader import SCHEMA_PATH, Hook, Hooks, Manifest, Target, load, schema, schema_default
from backup_core.manifest.remotes import Remote

__all__ = ["SCHEMA_PATH", "Hook", "Hooks", "Manifest", "Remote", "Target", "load", "schema", "schema_default"]
