"""Entry point: ``python -m loadtest``."""

from loadtest.cli import main

raise SystemExit(main())
