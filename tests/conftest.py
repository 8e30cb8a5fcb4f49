"""Shared test setup. Importing higgs_train first puts Hugging Face into offline mode before anything reads it."""

import higgs_train  # noqa: F401  (sets HF_HUB_OFFLINE=1 unless the environment says otherwise)
