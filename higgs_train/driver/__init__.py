"""The drivers, side by side over shared parts.

``cluster`` (Ray, resources, storage, run resolution) and ``prepare`` (manifests -> token caches -> reports) are
shared; ``worker`` is the Ray Train edge (``WorkerSpec``, the per-worker loop, ``build_torch_trainer``); ``train``
is the training job. The Tune sweep (``higgs_train.tune``) is the other driver over the same parts.
"""
