"""``python -m outreach_actors.cli``: the ``outreach`` command."""

import sys

from outreach_actors.cli import main

sys.exit(main())
