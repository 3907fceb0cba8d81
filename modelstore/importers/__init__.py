"""Import versions from where users keep them today: a folder of checkpoints, an MLflow registry.

Each importer works on an open Store and returns a summary dict (the `--json` output of
`modelstore import ...`); the CLI commands live in modelstore/cli_import.py.
"""
