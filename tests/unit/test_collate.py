"""The collator output for a tiny, fully hand-computed batch, and safety of repeated collation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from higgs_train.data.collate import build_collator, collate_records
from higgs_train.data.record_codec import record_to_sample

AUDIO_IN, AUDIO_OUT, PAD, BOS, EOS = 90, 91, 0, 1024, 1025
X = -100

CONFIG = SimpleNamespace(
    audio_in_token_idx=AUDIO_IN,
    audio_out_token_idx=AUDIO_OUT,
    pad_token_id=PAD,
    audio_stream_bos_id=BOS,
    audio_stream_eos_id=EOS,
    encode_whisper_embed=False,
    encode_audio_in_tokens=True,
    audio_num_codebooks=2,
    use_delay_pattern=True,
)


def record(input_ids, label_ids, codes, starts, is_out):
    codes = np.asarray(codes, dtype=np.int16)
    return {
        "id": "x",
        "row_index": 0,
        "speaker": None,
        "input_ids": np.asarray(input_ids, np.int32),
        "label_ids": np.asarray(label_ids, np.int32),
        "audio_codes": codes.reshape(-1),
        "audio_codes_shape": np.asarray(codes.shape, np.int32),
        "audio_ids_start": np.asarray(starts, np.int64),
        "audio_is_out": np.asarray(is_out, bool),
        "audio_waveforms": np.zeros(0, np.float32),
        "audio_waveforms_start": np.zeros(0, np.int64),
        "audio_sample_rates": np.zeros(0, np.int32),
        "num_tokens": 0,
        "audio_seconds": 0.0,
    }


# A: text, one trained audio-out of 3 frames.
REC_A = record([10, 11, AUDIO_OUT, 12], [X, 11, AUDIO_OUT, 12], [[1, 2, 3], [4, 5, 6]], [0], [True])
# B: an audio-in (1 frame), an untrained reference audio-out (2 frames), a trained audio-out (1 frame).
REC_B = record(
    [20, AUDIO_IN, AUDIO_OUT, 21, AUDIO_OUT, 22],
    [X, X, X, X, AUDIO_OUT, 22],
    [[13, 7, 8, 11], [14, 9, 10, 12]],
    [0, 1, 3],
    [False, True, True],
)


def test_collated_batch_equals_hand_built_expectation():
    batch = collate_records([REC_A, REC_B], build_collator(CONFIG))

    # Text: right-padded with pad_token_id to a multiple of 8; <|AUDIO_OUT|> labels always masked.
    assert batch.input_ids.tolist() == [
        [10, 11, AUDIO_OUT, 12, PAD, PAD, PAD, PAD],
        [20, AUDIO_IN, AUDIO_OUT, 21, AUDIO_OUT, 22, PAD, PAD],
    ]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]]
    assert batch.label_ids.tolist() == [[X, 11, X, 12, X, X, X, X], [X, X, X, X, X, 22, X, X]]

    # Audio-out: each segment framed by a BOS and an EOS column, then codebook k delayed by k
    # (BOS fills the head of the delayed row, EOS the tail of the others).
    seg_a = [[BOS, 1, 2, 3, EOS, EOS], [BOS, BOS, 4, 5, 6, EOS]]
    seg_b_ref = [[BOS, 7, 8, EOS, EOS], [BOS, BOS, 9, 10, EOS]]
    seg_b_tgt = [[BOS, 11, EOS, EOS], [BOS, BOS, 12, EOS]]
    expected_out = [seg_a[k] + seg_b_ref[k] + seg_b_tgt[k] for k in range(2)]
    assert batch.audio_out_ids.tolist() == expected_out
    assert batch.audio_out_ids_start.tolist() == [0, 6, 11]

    # Labels: no BOS target, EOS kept, delay fill is -100; the untrained reference segment is entirely -100.
    lab_a = [[X, 1, 2, 3, EOS, X], [X, X, 4, 5, 6, EOS]]
    lab_b_ref = [[X] * 5, [X] * 5]
    lab_b_tgt = [[X, 11, EOS, X], [X, X, 12, EOS]]
    assert batch.label_audio_ids.tolist() == [lab_a[k] + lab_b_ref[k] + lab_b_tgt[k] for k in range(2)]

    # Audio-in codes are framed and delayed the same way.
    assert batch.audio_in_ids.tolist() == [[BOS, 13, EOS, EOS], [BOS, BOS, 14, EOS]]
    assert batch.audio_in_ids_start.tolist() == [0]
    assert batch.audio_features is None


def test_repeated_collation_is_identical():
    collator = build_collator(CONFIG)
    first = collate_records([REC_A, REC_B], collator)
    second = collate_records([REC_A, REC_B], collator)
    for name in ("input_ids", "label_ids", "audio_out_ids", "label_audio_ids"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name


def test_collating_samples_leaves_them_untouched():
    sample = record_to_sample(REC_A)
    before = sample.label_ids.clone()
    collate_records([sample, sample], build_collator(CONFIG))
    assert torch.equal(sample.label_ids, before)  # upstream would have masked <|AUDIO_OUT|> in place


def test_whisper_config_requires_a_processor():
    with pytest.raises(ValueError, match="Whisper processor"):
        build_collator(SimpleNamespace(**{**vars(CONFIG), "encode_whisper_embed": True}))
