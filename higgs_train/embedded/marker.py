"""The file every directory of the embedded stack carries (model, audio tokenizer): what it is and what it
recommends (``models`` reads it to tell the tiny stack from a real checkpoint).

A module of its own so the stack's builders (``model``, ``audio_codec``) and ``higgs_train.model_loading`` share the name
without importing the package that orchestrates those builders.
"""

GENERATED_MARKER = "higgs_train_generated.json"
