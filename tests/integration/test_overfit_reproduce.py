"""Train on one sample until it is memorised, then get its exact codes back through every inference path.

Paths checked (all greedy): base + adapter through ``higgs_train.generation`` (what ray_jobs/generate.py runs),
the merged export through the same code, and the merged export through upstream's ``HiggsAudioServeEngine``.

The LoRA targets are the defaults (attention + text/audio MLPs of every layer), as a user trains: the embedded
model's output heads are scaled so that, as with a released checkpoint's trained heads, the decoder layers alone can
move the logits far enough to memorise a sample.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from higgs_train.chatml import AUDIO_OUT_BOS
from higgs_train.config import TrainingConfig
from higgs_train.data.collate import batch_to_model_inputs, build_collator, collate_records
from higgs_train.data.in_process import records_for_config
from higgs_train.decoding_rules import codes_from_delayed
from higgs_train.embedded.sample_data import create_sample_data
from higgs_train.export import export
from higgs_train.generation import SamplingSettings, load_generation_stack, prompt_for_texts, synthesize
from higgs_train.generation_prompt import prompt_from_record
from higgs_train.loss import compute_higgs_audio_loss
from higgs_train.model_loading import resolve_paths
from higgs_train.training.trainer import HiggsAudioTrainer

pytestmark = pytest.mark.integration

MAX_STEPS = 100  # accuracy 1.0 is first seen at step 40 (eval every 10 steps); the rest is margin
GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=300)


@torch.no_grad()
def teacher_forced_accuracy(model, model_config, record) -> float:
    """Top-1 next-code accuracy over every labelled audio position of the record (all codebooks)."""
    batch = collate_records([record], build_collator(model_config))
    outputs = model(**batch_to_model_inputs(batch))
    loss = compute_higgs_audio_loss(outputs, batch)
    return sum(loss.audio_correct) / sum(loss.audio_counted)


def serve_engine_codes(merged_dir: Path, audio_tokenizer_path: str, row: dict, audio_root: Path) -> np.ndarray:
    """Codes from upstream's serve engine on the merged directory (its own prompt building, CPU path)."""
    from boson_multimodal.data_types import AudioContent, ChatMLSample, Message
    from boson_multimodal.serve.serve_engine import HiggsAudioServeEngine

    engine = HiggsAudioServeEngine(str(merged_dir), audio_tokenizer_path, device="cpu", kv_cache_lengths=[1024])
    messages = []
    for m in row["messages"][: row["start_index"]]:
        content = m["content"]
        if isinstance(content, dict):
            content = AudioContent(audio_url=str(audio_root / content["audio_url"]))
        messages.append(Message(role=m["role"], content=content))
    response = engine.generate(
        ChatMLSample(messages=messages),
        max_new_tokens=GREEDY.max_new_tokens,
        temperature=0.0,
        force_audio_gen=True,
        ras_win_len=None,  # RAS re-samples repeated tokens even when greedy
        seed=0,
    )
    codes, finished = codes_from_delayed(torch.as_tensor(response.generated_audio_tokens), 1024)
    assert finished, "serve engine: audio did not end"
    return codes


def test_overfit_one_sample_then_reproduce_it(tmp_path):
    start = time.perf_counter()
    data = create_sample_data(tmp_path / "data", utterances_per_speaker=2)
    audio_root = Path(data["audio_base_path"])
    row = json.loads(Path(data["train"]).read_text())[0]
    manifest = audio_root / "one.json"  # relative audio paths resolve under the manifest's folder
    manifest.write_text(json.dumps([row]))
    config = TrainingConfig(
        train_data=str(manifest),
        val_data=str(manifest),
        output_dir=str(tmp_path / "run"),
        learning_rate=5e-3,
        lora_r=32,
        lora_alpha=32,
        lora_dropout=0.0,
        weight_decay=0.0,
        batch_size=1,
        max_steps=MAX_STEPS,
        num_epochs=MAX_STEPS,  # one step per epoch with one row
        warmup_steps=5,
        eval_every_steps=10,
        save_every_steps=10_000,
        log_every_steps=10,
        keep_best_k=1,
    )
    trainer = HiggsAudioTrainer(config, *records_for_config(config))
    result = trainer.train()
    train_seconds = time.perf_counter() - start
    perfect = [h["step"] for h in trainer.state.history if h.get("val_audio_accuracy") == 1.0]
    assert perfect, f"accuracy never reached 1.0: {[h.get('val_audio_accuracy') for h in trainer.state.history]}"
    record = trainer.train_records[0]

    # 1. base + adapter, loaded from disk like ray_jobs/generate.py --adapter does
    stack = load_generation_stack("embedded", "embedded", adapter=result.adapter_dir)
    assert teacher_forced_accuracy(stack.model, stack.model_config, record) == 1.0
    target = prompt_from_record(record, stack.tokenizer.convert_tokens_to_ids(AUDIO_OUT_BOS)).target_codes
    m = row["messages"]
    args = (audio_root / m[2]["content"]["audio_url"], m[1]["content"], m[3]["content"])
    adapted = synthesize(stack, prompt_for_texts(stack, *args), GREEDY)
    assert adapted.finished and adapted.text.endswith("<|audio_eos|>"), adapted.text  # generation stops there
    assert adapted.codes.shape == target.shape and np.array_equal(adapted.codes, target)

    # 2. merged export through the same code
    exported = export(result.adapter_dir, tmp_path / "export", merge=True)
    merged = load_generation_stack(str(exported.merged_dir), "embedded")
    merged_codes = synthesize(merged, prompt_for_texts(merged, *args), GREEDY).codes
    assert np.array_equal(merged_codes, target)

    # 3. merged export through upstream's serve engine
    audio_tokenizer_path = resolve_paths("embedded", "embedded").audio_tokenizer_path
    assert np.array_equal(serve_engine_codes(exported.merged_dir, audio_tokenizer_path, row, audio_root), target)
    print(
        f"\nfirst step with accuracy 1.0: {perfect[0]} (of {MAX_STEPS}); target {target.shape[1]} frames; "
        f"training {train_seconds:.0f}s, total {time.perf_counter() - start:.0f}s"
    )
