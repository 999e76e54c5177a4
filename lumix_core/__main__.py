"""``python -m lumix_core demo ...`` = the ``lumix`` console script (:mod:`lumix_core.cli`).

May import: lumix_core.cli.
"""
import sys

from .cli import main

sys.exit(main())
