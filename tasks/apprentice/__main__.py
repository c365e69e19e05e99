"""`python -m suti.tasks.apprentice`: one training run in its own process (multi-device)."""
import sys

from suti.tasks.apprentice.training import main

sys.exit(main())
