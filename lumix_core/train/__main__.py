"""``python -m lumix_core.train`` (also what ``torchrun -m lumix_core.train`` runs)."""
import sys

from .cli import main

sys.exit(main())
