"""Shared by every stage: errors, atomic writes, the stage runner, settings, code hashes."""
