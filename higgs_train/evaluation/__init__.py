"""Measure the voice, not just the loss: speaker similarity (SIM), intelligibility (WER/CER) and quality (DNSMOS and
cheap signal checks) of generated speech, offline from package wheels.

* ``metrics``: the ``Metric`` protocol and the ``Clip`` it scores;
* ``speaker`` / ``intelligibility`` / ``quality``: the metrics;
* ``suite``: ``VoiceEvaluator`` (runs the metrics chosen by ``EvalSettings``), flags and summaries;
* ``runner``: generate with one model and score (a Ray actor in ``ray_jobs/evaluate.py``);
* ``job`` / ``report``: the evaluation job, its tables, plots and MLflow runs;
* ``training``: the same metrics on a few validation rows during training.
"""

from higgs_train.evaluation.metrics import Clip, Metric
from higgs_train.evaluation.suite import EvalSettings, RowScore, Thresholds, VoiceEvaluator

__all__ = ["Clip", "EvalSettings", "Metric", "RowScore", "Thresholds", "VoiceEvaluator"]
