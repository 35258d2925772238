"""Manifest-driven zip backups: validate, snapshot, zip, verify, rotate, report."""

__version__ = "0.1.0"
