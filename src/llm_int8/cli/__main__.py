"""``python -m llm_int8.cli ...``: the same as the ``llm-int8`` command."""

import sys

from . import main

sys.exit(main())
