"""``VoiceEvaluator``: runs the configured metrics on clips and turns their numbers into flags and summaries.

Which metrics run is decided by ``EvalSettings`` (a typed object that crosses process boundaries to Ray actors);
models are loaded on first use, so a suite that only runs the cheap checks loads nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from higgs_train.evaluation.intelligibility import POCKETSPHINX_LABEL, Intelligibility, load_transcriber
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


# The speaking-rate bound of the audio check. Read English runs at about 150 words a minute, ~14 characters a second
# counting spaces (English words average 5-6 characters with their space; ``quality.CHARS_PER_SECOND``); fast
# conversational speech at 200-250 words a minute is ~20-25 characters/s, and the utterances of TTS corpora
# (LibriTTS, VCTK) stay below that. 40 characters/s is ~400 words a minute, almost three times read speech: only
# speed-talking records go faster, and no TTS prompt asks for one. A clip that would need more than 40 characters/s
# to say its text cannot be saying it (the reported case: 67 characters in 0.72 s, 93 characters/s). Measured with
# espeak-ng on one sentence: 175 / 250 / 350 / 450 words a minute give 13 / 25 / 36 / 46 characters/s.
MAX_CHARS_PER_SECOND = 40.0
# Flags that mean the audio itself is broken, whatever the voice: what ``generate.py`` refuses without
# ``--allow_bad_audio`` and what ``evaluate.py``'s table counts per model as "bad audio".
AUDIO_CHECK_FLAGS = ("too_short_for_text", "clipped", "silent")


@dataclass(frozen=True)
class Thresholds:
    """When a row is flagged. Defaults catch the failures users report (silent, noisy, looping, cut off).

    ``silent``: most 20 ms frames below -45 dBFS, or a peak below ``silent_peak_dbfs`` (-40 dBFS, 1 % of full
    scale: inaudible at any normal playback level; real recordings peak well above -30 dBFS). ``clipped``: more
    than 1 % of samples at full scale (careful recordings clip well under 0.1 %). ``too_short_for_text``: see
    ``MAX_CHARS_PER_SECOND``.
    """

    silent_above: float = 0.8  # silence_ratio
    silent_peak_dbfs: float = -40.0  # peak_dbfs
    clipped_above: float = 0.01  # clipping_ratio
    max_chars_per_second: float = MAX_CHARS_PER_SECOND  # chars_per_second
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
    if above("silence_ratio", t.silent_above) or below("peak_dbfs", t.silent_peak_dbfs):
        flags.append("silent")
    if above("clipping_ratio", t.clipped_above):
        flags.append("clipped")
    if above("chars_per_second", t.max_chars_per_second):
        flags.append("too_short_for_text")
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


def audio_problems(values: dict[str, float], t: Thresholds | None = None) -> list[str]:
    """The audio check: one line per ``AUDIO_CHECK_FLAGS`` failure of a clip's ``SignalChecks`` values, saying what
    was measured against which limit. Empty when the clip passes."""
    t = t or Thresholds()
    flags = flags_for(values, t)
    seconds = values.get("duration_s", 0.0)
    out = []
    if "too_short_for_text" in flags:
        rate = values["chars_per_second"]
        chars = round(rate * seconds)
        out.append(
            f"too short for its text: {seconds:.2f} s for {chars} characters ({rate:.0f} characters/s; speech stays "
            f"under {t.max_chars_per_second:.0f}/s, so at least {chars / t.max_chars_per_second:.2f} s)"
        )
    if "clipped" in flags:
        out.append(f"clipped: {values['clipping_ratio']:.1%} of samples at full scale (limit {t.clipped_above:.0%})")
    if "silent" in flags:
        out.append(
            f"silent: peak {values.get('peak_dbfs', math.nan):.1f} dBFS, RMS {values.get('rms_dbfs', math.nan):.1f} "
            f"dBFS, {values.get('silence_ratio', math.nan):.0%} of 20 ms frames below -45 dBFS (limits: peak "
            f"{t.silent_peak_dbfs:.0f} dBFS, {t.silent_above:.0%} silent frames)"
        )
    return out


def check_audio(waveform: np.ndarray, sample_rate: int, text: str, t: Thresholds | None = None) -> list[str]:
    """``audio_problems`` of one waveform that should say ``text`` (what ``generate.py`` runs on every clip)."""
    return audio_problems(SignalChecks().score(Clip("clip", waveform, sample_rate, text=text)), t)


def summarize(rows: list[RowScore], failures: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Per model: status (``ok`` or ``failed``, with the reason from ``failures`` or the rows' errors), row count,
    NaN-ignoring mean of every metric, how many rows carry each flag, and how many fail the audio check.

    A model in ``failures`` (it could not be loaded, or its actor died) has no rows; it is still listed, so a
    report never loses a model it was asked to evaluate.
    """
    failures = failures or {}
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
        errors = [r.error for r in mine if r.error]
        status, error = "ok", ""
        if errors and len(errors) == len(mine):
            status, error = "failed", f"every row failed; first: {errors[0]}"
        out[model] = {
            "status": status,
            "error": error,
            "rows": len(mine),
            "mean": means,
            "flags": flags,
            "flagged_rows": sum(bool(r.flags) for r in mine),
            "bad_audio_rows": sum(any(f in AUDIO_CHECK_FLAGS for f in r.flags) for r in mine),
        }
    for model, reason in failures.items():
        out[model] = {
            "status": "failed",
            "error": reason,
            "rows": 0,
            "mean": {},
            "flags": {},
            "flagged_rows": 0,
            "bad_audio_rows": 0,
        }
    return out


def _json_float(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
