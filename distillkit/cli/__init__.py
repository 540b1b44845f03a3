"""The `distillkit` command line (Typer). Options only: the work happens in `pipelines`."""
