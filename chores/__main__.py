"""`python -m chores ...`: the `chore` command, where its script is not on the PATH."""

from chores.cli.entry import main

if __name__ == "__main__":
    main()
