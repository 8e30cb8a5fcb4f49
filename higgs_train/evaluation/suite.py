"""``VoiceEvaluator``: runs the configured metrics on clips and turns their numbers into flags and summaries.

Which metrics run is decided by ``EvalSettings`` (a typed object that crosses process boundaries to Ray actors);
models are loaded on first use, so a suite that only runs the cheap checks loads nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from higgs_train.evaluation.intelligibility import Intelligibility, load_transcriber
from higgs_train.evaluation.metrics import Clip, Metric
from higgs_train.evaluation.quality import DnsMos, SignalChecks
from higgs_train.evaluation.speaker import SpeakerSimilarity, load_speaker_encoder

# Metrics the summaries and plots lead with, and whether higher is better.
HEADLINE_METRICS: dict[str, bool] = {
    "sim": True,
    "wer": False,
    "cer": False,
    "dnsmos_ovrl": True,
    "dnsmos_p808": True,
    "silence_ratio": False,
    "duration_ratio": True,
    "code_repetition": False,
    "finished": True,
}


@dataclass(frozen=True)
class Thresholds:
    """When a row is flagged. Defaults catch the failures users report (silent, noisy, looping, cut off)."""

    silent_above: float = 0.8  # silence_ratio
    clipped_above: float = 0.01  # clipping_ratio
    too_short_below: float = 0.5  # duration_ratio
    too_long_above: float = 2.0  # duration_ratio
    repetitive_above: float = 0.5  # code_repetition
    low_quality_ovrl_below: float = 1.5  # dnsmos_ovrl
    low_quality_p808_below: float = 2.5  # dnsmos_p808


@dataclass(frozen=True)
class EvalSettings:
    """Which metrics run and with which models. Empty model strings pick the packaged offline models."""

    sim: bool = True
    sim_model: str = ""  # "" = resemblyzer; or a local transformers x-vector dir (WavLM-SV)
    asr: bool = True
    asr_model: str = ""  # "" = pocketsphinx (rough, English only); or a local Whisper dir
    asr_language: str | None = None
    dnsmos: bool = True
    device: str = "cpu"
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def asr_label(self) -> str:
        from higgs_train.evaluation.intelligibility import POCKETSPHINX_LABEL

        if not self.asr:
            return "off"
        return POCKETSPHINX_LABEL if not self.asr_model else f"asr:{self.asr_model}"

    @property
    def sim_label(self) -> str:
        return "off" if not self.sim else (self.sim_model or "resemblyzer")


@dataclass
class RowScore:
    """One model's scores on one row; ``flags`` name the failures the thresholds caught."""

    model: str
    clip_id: str
    text: str
    metrics: dict[str, float]
    flags: list[str]
    transcript: str = ""
    speaker: str | None = None
    wav: str | None = None
    error: str = ""  # why the row has no clip (generation failed); its flags then hold "generation_error"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "metrics": {k: _json_float(v) for k, v in self.metrics.items()}}


class VoiceEvaluator:
    """Scores clips with SIM, WER/CER, DNSMOS and the signal checks as ``settings`` asks."""

    def __init__(self, settings: EvalSettings | None = None) -> None:
        self.settings = settings or EvalSettings()
        self._metrics: list[Metric] | None = None
        self._intelligibility: Intelligibility | None = None

    @property
    def metrics(self) -> list[Metric]:
        if self._metrics is None:
            s = self.settings
            metrics: list[Metric] = [SignalChecks()]
            if s.sim:
                metrics.append(SpeakerSimilarity(load_speaker_encoder(s.sim_model, s.device)))
            if s.asr:
                self._intelligibility = Intelligibility(load_transcriber(s.asr_model, s.device, s.asr_language))
                metrics.append(self._intelligibility)
            if s.dnsmos:
                metrics.append(DnsMos())
            self._metrics = metrics
        return self._metrics

    def score(self, clip: Clip, model: str = "", speaker: str | None = None) -> RowScore:
        values: dict[str, float] = {}
        for metric in self.metrics:
            values.update(metric.score(clip))
        transcript = self._intelligibility.last_transcript if self._intelligibility else ""
        return RowScore(
            model, clip.clip_id, clip.text, values, flags_for(values, self.settings.thresholds), transcript, speaker
        )


def flags_for(values: dict[str, float], t: Thresholds) -> list[str]:
    """Names of the failures ``values`` show (NaN never flags)."""

    def above(key: str, limit: float) -> bool:
        v = values.get(key, math.nan)
        return not math.isnan(v) and v > limit

    def below(key: str, limit: float) -> bool:
        v = values.get(key, math.nan)
        return not math.isnan(v) and v < limit

    flags = []
    if above("silence_ratio", t.silent_above):
        flags.append("silent")
    if above("clipping_ratio", t.clipped_above):
        flags.append("clipped")
    if below("duration_ratio", t.too_short_below):
        flags.append("too_short")
    if above("duration_ratio", t.too_long_above):
        flags.append("too_long")
    if above("code_repetition", t.repetitive_above):
        flags.append("repetitive")
    if values.get("finished") == 0.0:
        flags.append("no_eos")
    if below("dnsmos_ovrl", t.low_quality_ovrl_below) or below("dnsmos_p808", t.low_quality_p808_below):
        flags.append("low_quality")
    return flags


def summarize(rows: list[RowScore]) -> dict[str, dict[str, Any]]:
    """Per model: row count, NaN-ignoring mean of every metric, and how many rows carry each flag."""
    out: dict[str, dict[str, Any]] = {}
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        keys = list(dict.fromkeys(k for r in mine for k in r.metrics))
        means = {}
        for key in keys:
            vals = [r.metrics[key] for r in mine if key in r.metrics and not math.isnan(r.metrics[key])]
            means[key] = float(np.mean(vals)) if vals else math.nan
        flags: dict[str, int] = {}
        for r in mine:
            for flag in r.flags:
                flags[flag] = flags.get(flag, 0) + 1
        out[model] = {
            "rows": len(mine),
            "mean": means,
            "flags": flags,
            "flagged_rows": sum(bool(r.flags) for r in mine),
        }
    return out


def _json_float(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
