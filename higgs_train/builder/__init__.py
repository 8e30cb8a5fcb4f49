"""The dataset builder (``prepare_data.py build``): recordings -> voice-cloning manifests, read left to right.

``sources`` (detect and list, confined to ``--input``: speaker folders, LibriTTS, VCTK, Common Voice TSVs,
LJSpeech, lists, HF datasets, manifests) -> ``audio`` (per-file stage:
decode, resample, trim, ``segment``, loudness, WAV; with ``asr`` for unlabelled segments) -> ``ray_stage`` (that
stage on Ray Data actors) -> ``pairing`` (split and same-speaker references) -> ``report``; ``build`` drives them.
Its flags are parsed by ``higgs_train.commands.build``, beside the other commands.
"""
