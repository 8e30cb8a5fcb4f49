"""Evaluate voices: ``python ray_jobs/evaluate.py --manifest VAL --adapter A [--adapter B ...] [--base]``.

Each model clones every manifest row (its own reference turn and target text) in a Ray actor, and the clips are
scored for speaker similarity (SIM), intelligibility (WER/CER) and quality (DNSMOS, silence, clipping, length,
repetition, EOS). A model that cannot be loaded or whose actor dies is a ``failed`` line with its reason; the
others are still scored, and the exit code is 1 only when every model failed. Outputs go to ``--output_dir``: ``eval.json``, ``eval_table.md``/``.csv`` (one line per model),
``eval_rows.csv``, ``plots/eval_metrics.png``, ``wavs/<model>/<id>.wav``, and an MLflow run. See README
"Evaluate a voice".
"""

import sys

from higgs_train.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
