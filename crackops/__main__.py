"""``python -m crackops``: the ``crackops`` command without the installed script."""
import sys

from crackops.cli import main

sys.exit(main())
