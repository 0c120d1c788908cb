"""`python -m reconciler` runs the command line."""

from reconciler import cli

raise SystemExit(cli.main())
