"""The command line, the top of the house: the only package that knows typer and rich.

app.py      the typer app: one function per command; errors -> messages and exit codes
console.py  what is shown: run progress, the run summary, metric tables
"""

from mse_train.cli.app import app, main

__all__ = ["app", "main"]
