"""Entry point: ``python ray_jobs/train.py [flags]`` or ``ray job submit -- python ray_jobs/train.py [flags]``.

With no flags it trains the embedded tiny Higgs stack on generated sample data. See README.md.
"""

import sys

from higgs_train.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
