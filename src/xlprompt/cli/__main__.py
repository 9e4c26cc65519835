"""`python -m xlprompt.cli ...` (torchrun needs a module to run)."""
import sys

from . import app

sys.exit(app())
