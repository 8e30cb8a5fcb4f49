"""Voice metrics during training (``--eval_rows K``): at every validation, rank 0 generates the first K validation
rows with the model being trained and scores them with the same metrics as ``ray_jobs/evaluate.py``.

Validation records are already encoded, so the voice prompt and the ground truth are their codec codes decoded
back to audio (the codec round trip applies equally to every checkpoint, so SIM stays comparable across steps),
and the target text is read back from the prompt tokens. Sampling uses a fixed seed: two checkpoints are compared
on the same draws.

Ranking (``--checkpoint_metric``): ``eval/sim_rank`` counts a clip without speech as SIM 0 and ``eval/wer_rank`` a
clip without transcript as WER 1, so a checkpoint that falls silent ranks last instead of dropping out of the mean.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from higgs_train.evaluation.metrics import Clip
from higgs_train.evaluation.runner import auto_max_new_tokens, last_user_text
from higgs_train.evaluation.suite import EvalSettings, RowScore, VoiceEvaluator, summarize

logger = logging.getLogger(__name__)


class TrainingVoiceEval:
    """Built once on rank 0 (tokenizers and metric models load on first call), called at each validation."""

    def __init__(self, config: Any, paths: Any, model_config: Any, device: Any) -> None:
        self.config = config
        self.paths = paths
        self.model_config = model_config
        self.device = device
        self.settings = EvalSettings(sim_model=config.eval_sim_model, asr_model=config.eval_asr_model, device="cpu")
        self._tools: tuple[Any, Any, Any] | None = None
        self._evaluator: VoiceEvaluator | None = None

    def _load(self) -> tuple[Any, Any, Any]:
        if self._tools is None:
            from higgs_train.models import load_audio_tokenizer, load_text_tokenizer, load_whisper_processor

            self._tools = (
                load_text_tokenizer(self.paths.tokenizer_path),
                load_audio_tokenizer(self.paths.audio_tokenizer_path, device=self.device),
                load_whisper_processor(self.paths.model_path, self.model_config),
            )
            self._evaluator = VoiceEvaluator(self.settings)
        return self._tools

    def __call__(
        self, model: Any, records: list[dict], step: int, output_dir: str | Path, log_artifact: Any = None
    ) -> dict[str, float]:
        """Generate and score ``records``; returns ``eval/*`` metrics and writes ``eval/step_N/eval_rows.json``."""
        from higgs_train.generation import (
            GenerationStack,
            SamplingSettings,
            decode_codes,
            generation_collator,
            prompt_from_record,
            synthesize,
        )

        tokenizer, audio_tokenizer, whisper = self._load()
        assert self._evaluator is not None
        stack = GenerationStack(
            model,
            tokenizer,
            audio_tokenizer,
            generation_collator(self.model_config, whisper),
            self.model_config,
            whisper,
        )
        cap = int(self.config.validation_sample_max_new_tokens)
        base = SamplingSettings(seed=self.config.seed)
        rate = int(audio_tokenizer.sampling_rate)
        rows: list[RowScore] = []
        for record in records:
            rid = str(record.get("id", "record"))
            try:
                prompt = prompt_from_record(record, int(self.model_config.audio_out_bos_token_id))
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
        out = Path(output_dir) / "eval" / f"step_{step:07d}" / "eval_rows.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([r.to_dict() for r in rows], indent=1))
        if log_artifact is not None:
            log_artifact(str(out), f"eval/step_{step:07d}")
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
