"""A map-style torch ``Dataset`` over a manifest, for notebooks and debugging (training reads the token cache).

Why keep it: looking at one sample (its tokens, masks, codes) should not require a Ray cluster or a cache build.
It runs the very ``SamplePreprocessor`` the Ray pipeline runs, so what you inspect here is what the trainer gets.
Clips are encoded lazily and remembered in-process (by content hash), so indexing the same row twice is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from higgs_train.data.audio_io import AudioError, AudioLimits
from higgs_train.data.preprocess import SamplePreprocessor
from higgs_train.data.record_codec import record_to_sample
from higgs_train.data.sample_tokens import PreprocessError


class VoiceCloningDataset(Dataset):
    """``dataset[i]`` -> ``ChatMLDatasetSample`` of manifest row ``i``; a bad row raises with its id and reason.

    ``data_path`` is any manifest form ``manifest.load_manifest`` reads (JSON list, JSONL, Parquet, canonical
    Parquet). ``audio_base_path`` defaults to the manifest's folder.
    """

    def __init__(
        self,
        data_path: str | Path,
        tokenizer: Any,
        audio_tokenizer: Any,
        audio_base_path: str | Path | None = None,
        *,
        limits: AudioLimits | None = None,
        whisper: bool = False,
        encode_audio_in_tokens: bool = True,
        code_store: Any = None,
        max_tokens_per_row: int = 0,
    ) -> None:
        from higgs_train.data.manifest import load_manifest

        self.data_path = Path(data_path)
        self.rows = load_manifest(self.data_path)
        self.preprocessor = SamplePreprocessor(
            tokenizer,
            audio_tokenizer,
            audio_base_path if audio_base_path is not None else self.data_path.parent,
            limits,
            whisper,
            encode_audio_in_tokens=encode_audio_in_tokens,
            code_store=code_store,
            max_tokens_per_row=max_tokens_per_row,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def record(self, index: int) -> dict[str, Any]:
        """The preprocessed record of row ``index`` (the token-cache form)."""
        row = self.rows[index]
        try:
            return self.preprocessor(row)
        except PreprocessError as err:
            raise PreprocessError(err.stage, f"row {index} (id {row.get('id')!r}): {err.reason}") from err
        except AudioError as err:
            raise AudioError(f"row {index} (id {row.get('id')!r}): {err}") from err

    def __getitem__(self, index: int):
        return record_to_sample(self.record(index))

    def lengths(self) -> list[int]:
        """``num_tokens`` of every row (encodes every clip once; rows that fail raise)."""
        return [int(self.record(i)["num_tokens"]) for i in range(len(self))]
