"""Batch records with upstream's ``HiggsAudioSampleCollator``, configured from the model config alone.

Why upstream's collator: it owns the BOS/EOS framing, the delay pattern, the label masking of ``<|AUDIO_OUT|>`` and
of untrained audio, and Whisper feature extraction, exactly as the model was trained with. Re-implementing any of it
would let a training batch drift from what inference feeds the model. Every flag is read from the model config, so
one code path serves the DAC-only and the Whisper variants.

Upstream mutates ``sample.label_ids`` in place (it masks the ``<|AUDIO_OUT|>`` positions). ``collate_records``
therefore always collates *fresh* samples (``record_to_sample`` builds new tensors), so collating the same cached
records again, e.g. in the next epoch, gives the same batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from higgs_train.data.record_codec import record_to_sample

ROUND_TO = 8  # sequence padding multiple; the model pads merged sequences to 8 as well


def build_collator(model_config: Any, whisper_processor: Any = None, round_to: int = ROUND_TO):
    """A ``HiggsAudioSampleCollator`` for ``model_config`` (a ``HiggsAudioConfig``).

    ``whisper_processor`` (anything with ``.feature_extractor``, see ``models.load_whisper_processor``) is required
    when the config encodes Whisper embeddings: upstream would otherwise fail deep inside the first batch.
    """
    from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator

    if model_config.encode_whisper_embed and whisper_processor is None:
        raise ValueError("model config has encode_whisper_embed=True: pass a Whisper processor to build_collator")
    return HiggsAudioSampleCollator(
        whisper_processor=whisper_processor,
        audio_in_token_id=model_config.audio_in_token_idx,
        audio_out_token_id=model_config.audio_out_token_idx,
        pad_token_id=model_config.pad_token_id,
        audio_stream_bos_id=model_config.audio_stream_bos_id,
        audio_stream_eos_id=model_config.audio_stream_eos_id,
        round_to=round_to,
        encode_whisper_embed=model_config.encode_whisper_embed,
        return_audio_in_tokens=model_config.encode_audio_in_tokens,
        audio_num_codebooks=model_config.audio_num_codebooks,
        use_delay_pattern=model_config.use_delay_pattern,
    )


def collate_records(records: Sequence[Any], collator: Any):
    """Records (dicts, as stored in the token cache) or ``ChatMLDatasetSample``s -> ``HiggsAudioBatchInput``.

    Samples passed in directly are shallow-copied with a cloned ``label_ids`` so the caller's objects stay intact.
    """
    samples = []
    for rec in records:
        if isinstance(rec, dict):
            samples.append(record_to_sample(rec))
        else:
            samples.append(dataclasses.replace(rec, label_ids=rec.label_ids.clone()))
    if not samples:
        raise ValueError("cannot collate an empty batch")
    return collator(samples)


def batch_to_model_inputs(batch: Any) -> dict[str, Any]:
    """The ``HiggsAudioBatchInput`` fields as keyword arguments for ``HiggsAudioModel.forward`` (drops ``reward``)."""
    return {k: v for k, v in vars(batch).items() if k != "reward"}
