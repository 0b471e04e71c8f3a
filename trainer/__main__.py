"""`python -m trainer` is the `mindrun` command."""
import sys

from trainer.cli import main

sys.exit(main())
