"""The commands layer: argparse lives here only. Each module has `add_arguments(parser, name)` and
`run(args)` for the commands it serves, and calls the compiler and runtime with plain arguments."""
