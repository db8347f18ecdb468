"""The `qa-ebm` command: one module per subcommand, each parsing arguments and calling one library function."""
