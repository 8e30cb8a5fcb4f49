"""Generate with one model and score the result: the unit of work of ``ray_jobs/evaluate.py`` and of evaluation
during training.

Generation is the project's (``higgs_train.generation``): the same prompt layout, tokenization, collator and
decoding as ``ray_jobs/generate.py``. Each manifest row is cloned from its own reference turn and target text; the
clip is scored against that reference (SIM), the target text (WER/CER) and the target recording's length.
A row whose generation fails is kept with a ``generation_error`` flag and the reason: one bad row never ends an
evaluation. A model that cannot be loaded (a truncated adapter, an adapter for another base, a missing file) never
ends one either: ``ModelEvaluator`` keeps the one-line reason and ``run`` returns it in a ``ModelRun`` without rows,
so the Ray actor stays alive and the driver reports that model as failed while the others are scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from higgs_train.chatml import context_of, target_audio_url, text_of
from higgs_train.data.audio_io import load_audio
from higgs_train.data.manifest import load_manifest
from higgs_train.data.reasons import AudioError
from higgs_train.evaluation.metrics import Clip
from higgs_train.evaluation.suite import EvalSettings, RowScore, VoiceEvaluator
from higgs_train.generation import load_generation_stack, synthesize
from higgs_train.generation_prompt import auto_max_new_tokens, build_prompt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: a base (or merged) model, plus an optional adapter; ``label`` names it in reports."""

    label: str
    model_path: str = "embedded"
    adapter: str | None = None
    audio_tokenizer_path: str = "embedded"
    tokenizer_path: str | None = None


@dataclass(frozen=True)
class EvalRow:
    """A manifest row reduced to what evaluation needs: the prompt context, the target text and audio."""

    row_id: str
    speaker: str | None
    text: str
    context: dict[str, Any]
    reference_url: str | None
    target_url: str | None


@dataclass
class ScoredClip:
    """A row's score plus the generated waveform (returned to the driver, which writes WAVs and logs them)."""

    score: RowScore
    waveform: np.ndarray
    sample_rate: int


@dataclass
class ModelRun:
    """What one model's actor returns: its scored clips, or (``error`` set, no clips) why the model failed."""

    label: str
    clips: list[ScoredClip]
    error: str = ""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (Ray and torch errors carry whole tracebacks in their message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"[:limit]


def load_eval_rows(manifest: str | Path, max_rows: int = 0) -> list[EvalRow]:
    """The first ``max_rows`` (0: all) readable rows of a training-format manifest."""
    rows = []
    for row in load_manifest(Path(manifest)):
        if row.get("parse_error"):
            logger.warning("manifest row %s skipped: %s", row.get("row_index"), row["parse_error"])
            continue
        context = context_of(row)
        rows.append(
            EvalRow(
                row_id=context["id"],
                speaker=row.get("speaker"),
                text=text_of(context["messages"][-1].get("content")),
                context=context,
                reference_url=_first_audio_url(context["messages"]),
                target_url=target_audio_url(row),
            )
        )
        if max_rows and len(rows) >= max_rows:
            break
    return rows


class ModelEvaluator:
    """Loads one model (and the metrics) once, then generates and scores rows. Runs as a Ray actor or in-process."""

    def __init__(
        self,
        spec: ModelSpec,
        settings: EvalSettings,
        sampling: Any,  # higgs_train.generation.SamplingSettings
        audio_base_path: str | Path,
        device: str = "cpu",
    ) -> None:
        self.spec = spec
        self.sampling = sampling
        self.audio_base_path = Path(audio_base_path).resolve()
        self.load_error = ""
        try:
            self.stack = load_generation_stack(
                spec.model_path,
                spec.audio_tokenizer_path,
                adapter=spec.adapter,
                tokenizer_path=spec.tokenizer_path,
                device=device,
            )
        except Exception as exc:  # a model that cannot load is this model's failure; raising here kills the actor
            logger.warning("model %s cannot be loaded: %s", spec.label, exc)
            self.load_error = one_line(exc)
            return
        self.evaluator = VoiceEvaluator(replace(settings, device=device))

    def run(self, rows: list[EvalRow]) -> ModelRun:
        if self.load_error:
            return ModelRun(self.spec.label, [], self.load_error)
        try:
            return ModelRun(self.spec.label, [self.run_row(row) for row in rows])
        except Exception as exc:  # a metric model that fails to load, say: still only this model's failure
            logger.warning("model %s: evaluation failed: %s", self.spec.label, exc)
            return ModelRun(self.spec.label, [], f"evaluation failed: {one_line(exc)}")

    def run_row(self, row: EvalRow) -> ScoredClip:
        rate = int(self.stack.audio_tokenizer.sampling_rate)
        reference = self._load(row.reference_url, rate)
        target = self._load(row.target_url, rate)
        expected = len(target) / rate if target is not None else None
        try:
            prompt = build_prompt(
                row.context,
                self.stack.tokenizer,
                self.stack.audio_tokenizer,
                self.audio_base_path,
                whisper=bool(self.stack.model_config.encode_whisper_embed),
            )
            steps = auto_max_new_tokens(expected, self.sampling.max_new_tokens)
            result = synthesize(self.stack, prompt, replace(self.sampling, max_new_tokens=steps))
        except Exception as exc:  # one row's failure is a finding, not the end of the evaluation
            logger.warning("%s / %s: generation failed: %s", self.spec.label, row.row_id, exc)
            score = RowScore(self.spec.label, row.row_id, row.text, {}, ["generation_error"], speaker=row.speaker)
            score.error = f"{type(exc).__name__}: {exc}"[:500]
            return ScoredClip(score, np.zeros(0, dtype=np.float32), rate)
        clip = Clip(
            clip_id=row.row_id,
            waveform=result.waveform,
            sample_rate=result.sampling_rate,
            text=row.text,
            reference=reference,
            reference_rate=rate,
            target=target,
            target_rate=rate,
            finished=result.finished,
            codes=result.codes,
        )
        score = self.evaluator.score(clip, model=self.spec.label, speaker=row.speaker)
        return ScoredClip(score, result.waveform, result.sampling_rate)

    def _load(self, url: str | None, rate: int) -> np.ndarray | None:
        if not url:
            return None
        try:
            return load_audio(url, self.audio_base_path, rate)
        except (AudioError, OSError) as exc:
            logger.info("audio %s not usable for scoring: %s", url, exc)
            return None


def _first_audio_url(messages: list[dict[str, Any]]) -> str | None:
    for message in messages:
        content = message.get("content")
        for item in content if isinstance(content, list) else [content]:
            if isinstance(item, dict) and item.get("type") == "audio" and item.get("audio_url"):
                return str(item["audio_url"])
    return None
