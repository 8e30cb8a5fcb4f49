"""Export a trained adapter: ``python ray_jobs/export.py --checkpoint DIR --output OUT [--merge] [--base_model PATH]``.

``--checkpoint`` takes a training checkpoint (``adapter/`` + ``config.yaml``), a final adapter directory
(``<output_dir>/adapter``) or the training output directory. Writes ``OUT/adapter`` (peft files, training config,
README.md model card) and, with ``--merge``, ``OUT/merged`` (a plain HiggsAudioModel directory with its tokenizer).
See docs/export_generate.md.
"""

import sys

from higgs_train.commands.export import main

if __name__ == "__main__":
    sys.exit(main())
