"""higgs-train: LoRA fine-tuning of Higgs-Audio v2 for zero-shot voice cloning, as a distributed Ray job."""

import os as _os

# This project runs where no model hub is reachable; without this, every from_pretrained of a hub id retries the
# network for over a minute before using the local cache. Set HF_HUB_OFFLINE=0 explicitly to allow downloads.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")


# The text tokenizer is used in the driver before Ray forks workers; its Rust thread pool then prints a multi-line
# fork warning once per worker process into the user's console. Tokenising in parallel buys nothing here.
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
