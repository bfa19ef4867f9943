"""`python -m pipeline.evaluation ...`: see pipeline/evaluation/cli.py."""
import sys

from pipeline.evaluation.cli import main

sys.exit(main())
