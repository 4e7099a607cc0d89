"""One thin module per subcommand: typer options and help text, the work is in the library."""
