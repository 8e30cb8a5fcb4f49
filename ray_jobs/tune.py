"""Entry point: ``python ray_jobs/tune.py [flags]`` or ``ray job submit -- python ray_jobs/tune.py [flags]``.

A Ray Tune sweep over the training job (train.py's flags plus --search_space, --num_samples, ...). See docs/tune.md.
"""

import sys

import higgs_train  # noqa: F401  (first: puts Hugging Face offline before transformers is imported)
from higgs_train.cli import tune_main as main

if __name__ == "__main__":
    sys.exit(main())
