"""`python -m chores ...`: the `chore` command, where its script is not on the PATH."""

from chores.cli import main

main(prog_name="chore")
