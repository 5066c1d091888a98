"""The ``shoal`` command line (typer); ``shoal.cli.main:main`` is the console script."""
