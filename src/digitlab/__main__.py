"""`python -m digitlab`: the `digitlab` command."""

from digitlab.cli import main

main()
