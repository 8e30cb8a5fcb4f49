"""What rank 0 runs at each validation besides the loss: hooks the driver hands to the trainer
(``higgs_train.training.hooks``; built on each worker by ``validation_hooks`` below, which the drivers hand over in
``driver.worker.WorkerSpec``).

``TrainingSamples`` (``--num_validation_samples N``): greedy generations of the first N validation rows, written as
WAVs under ``samples/step_N/`` and logged as artifacts; evidence for a human, so a failure is a warning and counted in
``val/sample_failures``, never a failed job.

``TrainingVoiceEval`` (``--eval_rows K``): generates the first K validation rows with the model being trained and
scores them with the same metrics as ``ray_jobs/evaluate.py``. Validation records are already encoded, so the voice
prompt and the ground truth are their codec codes decoded back to audio (the codec round trip applies equally to
every checkpoint, so SIM stays comparable across steps), and the target text is read back from the prompt tokens.
Sampling uses a fixed seed: two checkpoints are compared on the same draws.

Ranking (``--checkpoint_metric``, ``training/checkpoint_ranking.py``): ``eval/sim_rank`` counts a clip without
speech as SIM 0 and ``eval/wer_rank`` a clip without transcript as WER 1, so a checkpoint that falls silent ranks
last instead of dropping out of the mean.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from typing import Any

import numpy as np

from higgs_train.config import TrainingConfig
from higgs_train.evaluation.metrics import Clip
from higgs_train.evaluation.suite import EvalSettings, RowScore, VoiceEvaluator, summarize
from higgs_train.generation import (
    GenerationStack,
    SamplingSettings,
    decode_codes,
    generate_validation_samples,
    generation_collator,
    synthesize,
)
from higgs_train.generation_prompt import auto_max_new_tokens, last_user_text, prompt_from_record
from higgs_train.model_loading import load_audio_tokenizer, load_text_tokenizer, load_whisper_processor, resolve_paths
from higgs_train.training.hooks import ValidationHook, ValidationStep

logger = logging.getLogger(__name__)


class GenerationTools:
    """The text tokenizer, audio tokenizer and Whisper processor of the config's model, loaded on first use (the
    audio tokenizer is large for real models, and a run without hooks never needs them) and shared by the hooks of
    one run."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self._tools: tuple[Any, Any, Any] | None = None

    def get(self, model_config: Any, device: Any) -> tuple[Any, Any, Any]:
        if self._tools is None:
            cfg = self.config
            paths = resolve_paths(cfg.model_path, cfg.audio_tokenizer_path, cfg.tokenizer_path or None)
            self._tools = (
                load_text_tokenizer(paths.tokenizer_path),
                load_audio_tokenizer(paths.audio_tokenizer_path, device=device),
                load_whisper_processor(paths.model_path, model_config),
            )
        return self._tools


class TrainingSamples:
    """Listenable evidence: greedy generations for the first validation rows, logged as WAV artifacts.

    Never fails the job: a failure (of one row, or of loading the tools) is a warning and is counted in
    ``val/sample_failures``.
    """

    def __init__(self, config: TrainingConfig, tools: GenerationTools) -> None:
        self.config = config
        self.tools = tools

    def __call__(self, at: ValidationStep) -> dict[str, float]:
        records = at.records[: self.config.num_validation_samples]
        artifact_dir = f"samples/step_{at.step:07d}"
        try:
            tokenizer, audio_tokenizer, whisper = self.tools.get(at.model_config, at.device)
            samples = generate_validation_samples(
                at.model,
                tokenizer,
                audio_tokenizer,
                at.model_config,
                records,
                at.output_dir / artifact_dir,
                SamplingSettings(temperature=0.0, max_new_tokens=self.config.validation_sample_max_new_tokens),
                whisper_processor=whisper,
                log_artifact=lambda path: at.log_artifact(path, artifact_dir),
            )
        except Exception:  # noqa: BLE001 -- samples are evidence for a human; training goes on without them
            logger.warning("step %d: validation samples failed; training continues", at.step, exc_info=True)
            return {"val/sample_failures": float(len(records))}
        return samples.metrics()


class TrainingVoiceEval:
    """SIM / WER / quality of the first ``eval_rows`` validation rows; metric models load on the first call."""

    def __init__(self, config: TrainingConfig, tools: GenerationTools) -> None:
        self.config = config
        self.tools = tools
        self.settings = EvalSettings(sim_model=config.eval_sim_model, asr_model=config.eval_asr_model, device="cpu")
        self._evaluator: VoiceEvaluator | None = None

    def __call__(self, at: ValidationStep) -> dict[str, float]:
        """Generate and score the rows; returns ``eval/*`` metrics and writes ``eval/step_N/eval_rows.json``."""
        tokenizer, audio_tokenizer, whisper = self.tools.get(at.model_config, at.device)
        if self._evaluator is None:
            self._evaluator = VoiceEvaluator(self.settings)
        model_config, step = at.model_config, at.step
        stack = GenerationStack(
            at.model,
            tokenizer,
            audio_tokenizer,
            generation_collator(model_config, whisper),
            model_config,
            whisper,
        )
        cap = int(self.config.validation_sample_max_new_tokens)
        base = SamplingSettings(seed=self.config.seed)
        rate = int(audio_tokenizer.sampling_rate)
        rows: list[RowScore] = []
        for record in at.records[: self.config.eval_rows]:
            rid = str(record.get("id", "record"))
            try:
                prompt = prompt_from_record(record, int(model_config.audio_out_bos_token_id))
                text = last_user_text(tokenizer.decode(prompt.sample.input_ids.tolist()))
                reference = _last_prompt_audio(prompt.sample)
                ref_wave = decode_codes(audio_tokenizer, reference) if reference is not None else None
                target_wave = decode_codes(audio_tokenizer, prompt.target_codes)
                steps = auto_max_new_tokens(len(target_wave) / rate, cap)
                result = synthesize(stack, prompt, replace(base, max_new_tokens=steps))
            except Exception as exc:  # a crash in one sample must not end the training run
                logger.warning("step %d: voice eval of %s failed: %s", step, rid, exc)
                rows.append(RowScore("train", rid, "", {}, ["generation_error"], error=str(exc)[:300]))
                continue
            clip = Clip(
                rid, result.waveform, result.sampling_rate, text, ref_wave, rate, target_wave, rate,
                finished=result.finished, codes=result.codes,
            )  # fmt: skip
            rows.append(self._evaluator.score(clip, model="train", speaker=record.get("speaker")))
        out = at.output_dir / "eval" / f"step_{step:07d}" / "eval_rows.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([r.to_dict() for r in rows], indent=1))
        at.log_artifact(str(out), f"eval/step_{step:07d}")
        return training_metrics(rows)


def training_metrics(rows: list[RowScore]) -> dict[str, float]:
    """``eval/<metric>`` means (NaN-free), the ranking keys and the failure counts of one evaluation."""
    summary = summarize(rows).get("train", {"mean": {}, "flags": {}, "flagged_rows": 0})
    out = {f"eval/{k}": v for k, v in summary["mean"].items() if not math.isnan(v)}
    sims = [r.metrics.get("sim", math.nan) for r in rows]
    wers = [r.metrics.get("wer", math.nan) for r in rows]
    out["eval/sim_rank"] = float(np.mean([0.0 if math.isnan(s) else s for s in sims])) if rows else 0.0
    out["eval/wer_rank"] = float(np.mean([1.0 if math.isnan(w) else min(w, 1.0) for w in wers])) if rows else 1.0
    out["eval/flagged_rows"] = float(summary["flagged_rows"])
    out["eval/generation_errors"] = float(summary["flags"].get("generation_error", 0))
    return out


def _last_prompt_audio(sample: Any) -> np.ndarray | None:
    """Codes of the prompt's last audio segment: the voice prompt right before the target text."""
    starts = sample.audio_ids_start
    if starts is None or len(starts) == 0:
        return None
    return sample.audio_ids_concat[:, int(starts[-1]) :].numpy()


def validation_hooks(config: TrainingConfig) -> list[ValidationHook]:
    """What rank 0 runs at each validation besides the loss, in this order: audio samples
    (``--num_validation_samples``) and voice metrics (``--eval_rows``). They share one set of generation tokenizers,
    loaded on first use."""
    tools = GenerationTools(config)
    hooks: list[ValidationHook] = []
    if config.num_validation_samples:
        hooks.append(TrainingSamples(config, tools))
    if config.eval_rows:
        hooks.append(TrainingVoiceEval(config, tools))
    return hooks
