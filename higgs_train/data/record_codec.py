"""The token-cache record codec: one training record <-> one Arrow row, and a record -> ``ChatMLDatasetSample``.

A record (``RECORD_SCHEMA``) is what ``preprocess.SamplePreprocessor`` produces for one manifest row, flattened into
Arrow types so it can be written to Parquet (the token cache), streamed by Ray Data and rebuilt with
``record_to_sample`` on the training worker. The field meanings are in ``higgs_train.data.preprocess``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("row_index", pa.int64()),
        pa.field("speaker", pa.string()),
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("label_ids", pa.list_(pa.int32())),
        pa.field("audio_codes", pa.list_(pa.int16())),
        pa.field("audio_codes_shape", pa.list_(pa.int32())),
        pa.field("audio_ids_start", pa.list_(pa.int64())),
        pa.field("audio_is_out", pa.list_(pa.bool_())),
        pa.field("audio_waveforms", pa.list_(pa.float32())),
        pa.field("audio_waveforms_start", pa.list_(pa.int64())),
        pa.field("audio_sample_rates", pa.list_(pa.int32())),
        pa.field("num_tokens", pa.int64()),
        pa.field("audio_seconds", pa.float64()),
    ]
)
_LIST_DTYPES: dict[str, Any] = {
    "input_ids": np.int32,
    "label_ids": np.int32,
    "audio_codes": np.int16,
    "audio_codes_shape": np.int32,
    "audio_ids_start": np.int64,
    "audio_is_out": np.bool_,
    "audio_waveforms": np.float32,
    "audio_waveforms_start": np.int64,
    "audio_sample_rates": np.int32,
}


def records_to_table(records: list[dict[str, Any]], schema: pa.Schema = RECORD_SCHEMA) -> pa.Table:
    """Records -> Arrow table without per-element Python conversion of the (large) list columns."""
    columns = []
    for f in schema:
        values = [r.get(f.name) for r in records]
        if pa.types.is_list(f.type):
            columns.append(_list_array(values, f.type, _LIST_DTYPES.get(f.name)))
        else:
            columns.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _list_array(values: list[Any], type_: pa.DataType, dtype: Any) -> pa.Array:
    parts = [np.asarray(v if v is not None else [], dtype=dtype) for v in values]
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    nulls = np.array([v is None for v in values], dtype=bool)
    mask = pa.array(nulls, pa.bool_()) if nulls.any() else None
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=type_.value_type), mask=mask)


def iter_records(table: pa.Table) -> Iterator[dict[str, Any]]:
    """Rows of a record table as dicts of numpy arrays (list columns, views into Arrow memory) and scalars."""
    for batch in table.to_batches():
        cols: dict[str, list[Any]] = {}
        for name in batch.schema.names:
            arr = batch.column(name)
            if pa.types.is_list(arr.type):
                # offsets index the whole child array even for a sliced ListArray, so use .values, not .flatten()
                offsets = arr.offsets.to_numpy()
                values = arr.values.to_numpy(zero_copy_only=False)
                cols[name] = [values[offsets[i] : offsets[i + 1]] for i in range(len(arr))]
            else:
                cols[name] = arr.to_pylist()
        for i in range(batch.num_rows):
            yield {name: col[i] for name, col in cols.items()}


def record_to_sample(record: dict[str, Any]):
    """A fresh ``ChatMLDatasetSample`` (new tensors every call; upstream's collator edits ``label_ids`` in place)."""
    import torch
    from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample

    def t(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(np.asarray(record[name]), dtype=dtype)

    k, total = (int(x) for x in np.asarray(record["audio_codes_shape"]))
    codes = t("audio_codes", torch.long).reshape(k, total)
    starts = t("audio_ids_start", torch.long)
    return ChatMLDatasetSample(
        input_ids=t("input_ids", torch.long),
        label_ids=t("label_ids", torch.long),
        audio_ids_concat=codes,
        audio_ids_start=starts,
        audio_waveforms_concat=t("audio_waveforms", torch.float32),
        audio_waveforms_start=t("audio_waveforms_start", torch.long),
        audio_sample_rate=t("audio_sample_rates", torch.long),
        audio_speaker_indices=torch.full((len(starts),), -1, dtype=torch.long),  # -1: unknown speaker (upstream)
    )
