"""``python -m musseltools`` is the ``musseltools`` command."""

from .cli import main

raise SystemExit(main())
