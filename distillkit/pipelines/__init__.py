"""One module per stage, each with a typed config and `run(cfg)`; recipes ship here as TOML data."""
