"""Command-line layer: one module per command, shared options in :mod:`.options`."""
