"""The command line: the entry point, the command registry, one module per command, and
the whole-job pipeline. Nothing else in dnntune imports it."""
