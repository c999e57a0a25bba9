"""``python -m rdad`` is the ``rdad`` console script."""

from rdad.cli import main

raise SystemExit(main())
