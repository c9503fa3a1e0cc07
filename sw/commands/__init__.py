"""One module per `sam2fpga` subcommand (see sw/cli.py)."""
