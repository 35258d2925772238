"""What a target holds: the walk over files and folders, and consistent SQLite snapshots."""
