"""Benchmark suites behind `tuneless bench NAME` (names mapped in tuneless.commands.bench);
each module has add_arguments(parser) and run(args). Results go to docs/results/ as CSV,
markdown and PNG, each stamped with the command, the git commit and the machine.
"""
