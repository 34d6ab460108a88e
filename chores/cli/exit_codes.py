"""The `chore` command's exit codes beyond 0 (done), 1 (a user error, one line on stderr)
and 2 (bad usage, click's), and what Ctrl-C says. Imports nothing: the script's `entry`
uses it before anything else is loaded."""

EXIT_REFUSED = 3  # quota check: the run may not start
EXIT_MISMATCH = 4  # reconcile: the invoice does not agree with the source
EXIT_LOCKED = 5  # run: a worker is metering the org right now (its Redis lock)
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C (128 + SIGINT)
INTERRUPTED = "interrupted: what was written so far is kept; run the command again to go on"
