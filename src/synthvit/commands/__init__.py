"""The `synthvit` command line (cli.py) and one module per command."""
