"""`python -m digitlab.cli`: the `digitlab` command."""

from digitlab.cli import main

main()
