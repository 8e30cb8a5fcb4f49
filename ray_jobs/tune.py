"""Entry point: ``python ray_jobs/tune.py [flags]`` or ``ray job submit -- python ray_jobs/tune.py [flags]``.

A Ray Tune sweep over the training job (train.py's flags plus --search_space, --num_samples, ...). See docs/tune.md.
"""

import sys

from higgs_train.commands.tune import main

if __name__ == "__main__":
    sys.exit(main())
