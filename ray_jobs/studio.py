"""The Studio: one page to build a data set, train, listen, compare and speak: ``python ray_jobs/studio.py``.

Open http://127.0.0.1:7860/ (from another machine: ``ssh -L 7860:127.0.0.1:7860 HEAD`` first). ``--host``
other than loopback needs ``--auth TOKEN``. Files are served only under ``--data_root`` and ``--output_root``.

The app lives in ``higgs_train.studio``.
"""

import sys

from higgs_train.commands.studio import main

if __name__ == "__main__":
    sys.exit(main())
