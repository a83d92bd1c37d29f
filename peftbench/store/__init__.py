"""The on-disk truth: run records and their check, safe names, atomic writes, locks and mid-run checkpoints,
checksums, the environment a record stores. Imports only errors and paths."""
