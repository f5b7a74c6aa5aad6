"""The typer CLI: parses options and renders library results; no logic of its own."""
