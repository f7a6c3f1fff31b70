"""The config file: TOML read and written with tomlkit (comments kept), its schema, loading with errors
that name file, line and column, rule edits, and the import of dae configs."""
