"""Sub-commands of the `tuneless` CLI; each module has add_parser(subparsers) and run(args)."""
