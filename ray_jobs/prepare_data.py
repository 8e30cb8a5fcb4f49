"""Data preparation: ``python ray_jobs/prepare_data.py convert|build ...`` (``build --help`` lists its flags).

``convert``: any manifest form -> canonical Parquet; ``build``: recordings -> voice-cloning manifests and a data
report. See README "Bring your own data".
"""

import sys

from higgs_train.commands.build import main

if __name__ == "__main__":
    sys.exit(main())
