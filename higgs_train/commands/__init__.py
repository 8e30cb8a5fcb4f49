"""One front door per command: ``ray_jobs/<command>.py`` is a three-line shim over ``main`` of one module here.

``train`` and ``tune`` generate their flags from the config dataclasses (``TrainingConfig``, ``SweepSettings``) by
transformers' ``HfArgumentParser`` so they never drift apart; ``export``, ``generate``, ``evaluate``, ``build``
(``prepare_data.py``'s ``convert`` and ``build``) and ``studio`` declare their few flags on
``higgs_train.flag_parser.FlagParser``. Flags more than one command uses live in ``shared_flags``. Every parser
refuses prefix abbreviations and answers a typo with the closest flag. Each ``main(argv) -> int`` returns the exit
status; errors a user can fix are one line on stderr. This package re-exports nothing, so a command imports only
what it runs.
"""
