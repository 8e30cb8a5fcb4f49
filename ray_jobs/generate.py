"""Voice cloning with a base, merged or base+adapter model: ``python ray_jobs/generate.py ...``.

Single prompt::

    python ray_jobs/generate.py --model_path embedded --adapter outputs/default/adapter \
        --ref_audio ref.wav --ref_text "Transcript of ref.wav." --text "What to say." --output out.wav

A speaker of a built data set (its best reference clip and transcript) instead of ``--ref_audio``/``--ref_text``::

    python ray_jobs/generate.py --adapter outputs/default/adapter --speaker spk_mid --data outputs/sample_data \
        --text "What to say." --output out.wav

Every clip gets the audio check (too short for its text, clipped, silent): a failure is printed with what was
measured and exits 1 unless ``--allow_bad_audio``.

Batch (one WAV per manifest row, from the row's own reference turn and target text)::

    python ray_jobs/generate.py --model_path OUT/merged --manifest val.json --output_dir samples/

The prompt is built like a training sample (see higgs_train/generation.py). ``--temperature 0`` is greedy.
"""

import sys

from higgs_train.commands.generate import main

if __name__ == "__main__":
    sys.exit(main())
