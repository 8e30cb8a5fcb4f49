"""Entry point: ``python ray_jobs/train.py [flags]`` or ``ray job submit -- python ray_jobs/train.py [flags]``.

With no flags it trains the embedded tiny Higgs stack on generated sample data. See README.md.
"""

import sys

import higgs_train  # noqa: F401  (first: puts Hugging Face offline before transformers is imported)
from higgs_train.cli import main

if __name__ == "__main__":
    sys.exit(main())
