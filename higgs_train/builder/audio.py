"""Step 2 of the builder: one source item -> normalised 24 kHz mono 16-bit WAV clips (or a reason why not).

``ClipProcessor`` is the whole per-file stage and runs without Ray (the Ray actor in ``ray_stage`` only wraps it):
decode -> downmix -> resample to 24 kHz -> reject non-finite / clipped / silent audio -> trim leading and trailing
silence -> cut long recordings at pauses (``--segment``) -> check length -> loudness-normalise (``--loudness``) ->
write ``DIR/audio/<speaker>/<name>.wav``.

Before anything is read into memory, a file over the caps (``--max_file_seconds`` from its header,
``--max_file_mb`` from its size) is rejected: a 2 GiB file or a header claiming 12 hours would otherwise be read
whole and decoded to float32 in the actor (gigabytes, or a MemoryError).

A file without a transcript (``SourceItem.text`` None) is still written, cut at pauses when it is longer than
``--max_audio_seconds`` (there is no transcript to misalign), and its clips stay unlabelled: ``build`` lists them in
``DIR/to_transcribe.tsv`` for the user to fill (or ``--asr_model`` transcribes them).

Reruns skip finished files: the result of an item is stored under ``DIR/.build_cache/<key>.json``, where the key is
the sha256 of the audio bytes, the item's name, transcript, speaker and the settings; a later run with the same key
reuses it (when its WAVs still exist) without decoding anything: the driver looks results up before it starts any
actor (``cached_result``), and only changed or new files go to the actors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from higgs_train.builder.asr import Transcriber
from higgs_train.builder.segment import SegmentPlan, SpeechDetector, cut, forced_split, greedy_split
from higgs_train.builder.source_listing import NO_TRANSCRIPT, UNREADABLE, Rejection, SourceItem
from higgs_train.data.audio_io import resample, to_mono

TARGET_SAMPLE_RATE = 24000
CACHE_DIR = ".build_cache"
AUDIO_DIR = "audio"

TOO_SHORT = "too short"
TOO_LONG = "too long"
SILENT = "silent"
CLIPPED = "clipped"
NON_FINITE = "non-finite samples"
UNLABELLED = "unlabelled segment"
UNSEGMENTABLE = "no pause to cut at"
PROCESSING_FAILED = "processing failed"
FILE_TOO_LARGE = "file too large"
TO_TRANSCRIBE = "to_transcribe.tsv"


@dataclass(frozen=True)
class AudioSettings:
    """Everything that changes the audio written; part of each item's cache key."""

    output_dir: str
    min_seconds: float = 0.5
    max_seconds: float = 30.0
    segment: bool = False
    min_segment_seconds: float = 2.0
    max_segment_seconds: float = 15.0
    loudness_lufs: float | None = None
    trim_silence: bool = True
    trim_top_db: float = 40.0
    silence_rms: float = 1e-4
    clipped_fraction: float = 0.001  # share of samples at full scale above which a file counts as clipped
    asr_model: str | None = None
    # Caps checked before a file is read (they decide whether it is processed, not what is written: not in the key).
    max_file_seconds: float = 3600.0
    max_file_bytes: int = 1 << 30

    def identity(self) -> dict:
        skip = ("output_dir", "max_file_seconds", "max_file_bytes")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class Clip:
    """One written clip. ``audio_url`` is relative to the output folder; ``text`` None means unlabelled."""

    key: str
    speaker: str
    audio_url: str
    text: str | None
    seconds: float
    text_from: str  # "transcript", "forced split", "asr" or "none"


@dataclass(frozen=True)
class FileResult:
    key: str
    speaker: str
    clips: tuple[Clip, ...]
    rejections: tuple[Rejection, ...]
    cached: bool = False
    input_seconds: float = 0.0

    def to_json(self) -> str:
        """The form results take to the cache and across Ray (Arrow cannot hold the nested dataclasses)."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> FileResult:
        body = json.loads(text)
        clips = tuple(Clip(**c) for c in body.pop("clips"))
        rejections = tuple(Rejection(**r) for r in body.pop("rejections"))
        return cls(clips=clips, rejections=rejections, **body)


def cache_key(item: SourceItem, settings: AudioSettings) -> str:
    """sha256 of the audio (streamed from the file: the driver keys every file of a corpus) and the item's meta."""
    if item.audio_bytes is not None:
        digest = hashlib.sha256(item.audio_bytes)
    else:
        assert item.audio_path is not None
        with open(item.audio_path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256")
    meta = {"key": item.key, "speaker": item.speaker, "lines": item.text_lines, "settings": settings.identity()}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()


def _to_fill(clip: Clip) -> str:
    """The report's detail for a clip without text: where it is and what to do (tests read the path out of it)."""
    return f"written to {clip.audio_url}; no transcript: fill its line in {TO_TRANSCRIBE} and rerun"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


class ClipProcessor:
    """The per-file stage. Holds the VAD and ASR models (loaded on first use, once per process)."""

    def __init__(self, settings: AudioSettings) -> None:
        self.settings = settings
        self.out = Path(settings.output_dir)
        self._detector: SpeechDetector | None = None
        self._transcriber = None

    # ----------------------------------------------------------------------------------------------- entry

    def __call__(self, item: SourceItem) -> FileResult:
        try:
            oversized = self.oversized(item)
            if oversized:
                return self._rejected(item, FILE_TOO_LARGE, oversized)
            key = cache_key(item, self.settings)
            cached = self._cached(key)
            if cached is not None:
                return cached
            data = item.read_audio_bytes()
        except OSError as err:
            return self._rejected(item, UNREADABLE, f"cannot read: {err.strerror}")
        try:
            result = self._process(item, data, key)
        except Exception as err:  # one bad file must never stop a 100 h build: report it and go on
            return self._rejected(item, PROCESSING_FAILED, f"{type(err).__name__}: {err}")
        self._store(key, result)
        return result

    def cached_result(self, item: SourceItem) -> FileResult | None:
        """The stored result of an unchanged item, without decoding (the driver skips such items before Ray)."""
        try:
            return None if self.oversized(item) else self._cached(cache_key(item, self.settings))
        except OSError:
            return None

    def oversized(self, item: SourceItem) -> str | None:
        """Why the file is over the caps, from its size and header alone (None: within them)."""
        s = self.settings
        size = len(item.audio_bytes) if item.audio_bytes is not None else os.stat(str(item.audio_path)).st_size
        if size > s.max_file_bytes:
            return f"{size / 2**20:.0f} MiB > --max_file_mb {s.max_file_bytes / 2**20:.0f}; split it first"
        try:
            info = sf.info(io.BytesIO(item.audio_bytes) if item.audio_bytes is not None else str(item.audio_path))
        except Exception:  # not a header soundfile reads: decoding rejects it with a reason
            return None
        seconds = info.frames / info.samplerate if info.samplerate > 0 else 0.0
        if seconds > s.max_file_seconds:
            return f"header says {seconds:.0f}s > --max_file_seconds {s.max_file_seconds:g}; split it first"
        return None

    def _rejected(self, item: SourceItem, reason: str, detail: str, seconds: float = 0.0) -> FileResult:
        return FileResult(
            item.key, item.speaker, (), (Rejection(item.key, item.speaker, reason, detail),), False, seconds
        )

    # ----------------------------------------------------------------------------------------------- cache

    def _cache_file(self, key: str) -> Path:
        return self.out / CACHE_DIR / f"{key}.json"

    def _cached(self, key: str) -> FileResult | None:
        path = self._cache_file(key)
        if not path.is_file():
            return None
        result = FileResult.from_json(path.read_text())
        if not all((self.out / c.audio_url).is_file() for c in result.clips):
            return None
        return dataclasses.replace(result, cached=True)

    def _store(self, key: str, result: FileResult) -> None:
        path = self._cache_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(dataclasses.replace(result, cached=False).to_json())
        tmp.replace(path)

    # ------------------------------------------------------------------------------------------ processing

    def _process(self, item: SourceItem, data: bytes, key: str) -> FileResult:
        s = self.settings
        try:
            wave = decode(data, TARGET_SAMPLE_RATE)
        except Exception as err:  # decoders raise many types for corrupt or unsupported files
            return self._rejected(item, UNREADABLE, f"cannot decode ({type(err).__name__})")
        seconds = len(wave) / TARGET_SAMPLE_RATE
        problem = quality_problem(wave, s)
        if problem:
            return self._rejected(item, *problem, seconds=seconds)
        if s.trim_silence:
            wave = trim(wave, s.trim_top_db)
        trimmed = len(wave) / TARGET_SAMPLE_RATE
        name = f"{_safe_name(Path(item.key).stem)}-{key[:8]}"
        if trimmed <= s.max_seconds:
            if trimmed < s.min_seconds:
                return self._rejected(item, TOO_SHORT, f"{trimmed:.2f}s < {s.min_seconds}s", seconds)
            if item.text is not None:
                clip = self._write(item, name, wave, item.text, "transcript")
                return FileResult(item.key, item.speaker, (clip,), (), False, seconds)
            text = self.transcriber(wave, TARGET_SAMPLE_RATE) if s.asr_model else None
            clip = self._write(item, name, wave, text, "asr" if text else "none")
            missing = () if text else (Rejection(item.key, item.speaker, NO_TRANSCRIPT, _to_fill(clip)),)
            return FileResult(item.key, item.speaker, (clip,), missing, False, seconds)
        if not s.segment and item.text is not None:
            detail = f"{trimmed:.1f}s > {s.max_seconds}s; use --segment to cut it at pauses"
            return self._rejected(item, TOO_LONG, detail, seconds)
        return self._segmented(item, name, wave, seconds)

    def _segmented(self, item: SourceItem, name: str, wave: np.ndarray, seconds: float) -> FileResult:
        s = self.settings
        total = len(wave) / TARGET_SAMPLE_RATE
        regions = self.detector.regions(wave, TARGET_SAMPLE_RATE)
        rejections: list[Rejection] = []
        lines = item.text_lines
        forced = (
            forced_split(regions, len(lines), total, s.min_segment_seconds, s.max_segment_seconds)
            if len(lines) > 1
            else None
        )
        if forced is not None:
            plan, texts, source = SegmentPlan(forced, []), list(lines), "forced split"
        else:
            plan = greedy_split(regions, total, s.min_segment_seconds, s.max_segment_seconds)
            texts, source = [None] * len(plan.segments), "none"
            if lines:
                detail = f"transcript has {len(lines)} line(s) for {len(plan.segments)} segment(s); not used"
                rejections.append(Rejection(item.key, item.speaker, "transcript not split", detail))
        for span in plan.unusable:
            detail = (
                f"{span.start:.1f}-{span.end:.1f}s cannot be cut into {s.min_segment_seconds}-{s.max_segment_seconds}s"
            )
            rejections.append(Rejection(item.key, item.speaker, UNSEGMENTABLE, detail))
        clips: list[Clip] = []
        for index, span in enumerate(plan.segments):
            piece = cut(wave, TARGET_SAMPLE_RATE, span)
            text, text_from = texts[index], source
            if text is None and s.asr_model:
                text, text_from = self.transcriber(piece, TARGET_SAMPLE_RATE), "asr"
            if not text:
                text, text_from = None, "none"
            clip_key = f"{item.key}#{index:03d}"
            clip = self._write(item, f"{name}_{index:03d}", piece, text, text_from, clip_key)
            clips.append(clip)
            if text is None:
                detail = f"{span.start:.1f}-{span.end:.1f}s {_to_fill(clip)}"
                rejections.append(Rejection(clip_key, item.speaker, UNLABELLED, detail))
        if not plan.segments:
            rejections.append(Rejection(item.key, item.speaker, UNSEGMENTABLE, "no speech segments found"))
        return FileResult(item.key, item.speaker, tuple(clips), tuple(rejections), False, seconds)

    def _write(
        self, item: SourceItem, name: str, wave: np.ndarray, text: str | None, text_from: str, key: str | None = None
    ) -> Clip:
        if self.settings.loudness_lufs is not None:
            wave = normalise_loudness(wave, TARGET_SAMPLE_RATE, self.settings.loudness_lufs)
        rel = f"{AUDIO_DIR}/{_safe_name(item.speaker)}/{name}.wav"
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        sf.write(tmp, wave, TARGET_SAMPLE_RATE, subtype="PCM_16", format="WAV")
        tmp.replace(path)
        return Clip(key or item.key, item.speaker, rel, text, len(wave) / TARGET_SAMPLE_RATE, text_from)

    # ------------------------------------------------------------------------------------------------ models

    @property
    def detector(self) -> SpeechDetector:
        if self._detector is None:
            self._detector = SpeechDetector()
        return self._detector

    @property
    def transcriber(self):
        if self._transcriber is None:
            assert self.settings.asr_model is not None
            self._transcriber = Transcriber(self.settings.asr_model)
        return self._transcriber


# ------------------------------------------------------------------------------------------- signal helpers


def decode(data: bytes, sample_rate: int) -> np.ndarray:
    """Any soundfile-readable file (WAV, FLAC, OGG, MP3) as mono float32 at ``sample_rate``."""
    frames, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if frames.size == 0:
        raise ValueError("no samples")
    return resample(to_mono(frames), int(sr), sample_rate)


def quality_problem(wave: np.ndarray, settings: AudioSettings) -> tuple[str, str] | None:
    """``(reason, detail)`` for audio that must not be trained on, else None."""
    if not np.all(np.isfinite(wave)):
        return NON_FINITE, "NaN or Inf samples"
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms < settings.silence_rms:
        return SILENT, f"RMS {rms:.1e}"
    at_full_scale = float(np.mean(np.abs(wave) >= 0.999))
    if at_full_scale > settings.clipped_fraction:
        return CLIPPED, f"{100 * at_full_scale:.2f}% of samples at full scale"
    return None


def trim(wave: np.ndarray, top_db: float) -> np.ndarray:
    """Leading and trailing silence removed (quieter than ``top_db`` below the peak), a short margin kept."""
    import librosa

    _, (start, end) = librosa.effects.trim(wave, top_db=top_db)
    margin = int(0.05 * TARGET_SAMPLE_RATE)
    return wave[max(0, start - margin) : min(len(wave), end + margin)]


def normalise_loudness(wave: np.ndarray, sample_rate: int, target_lufs: float) -> np.ndarray:
    """ITU-R BS.1770 integrated loudness to ``target_lufs`` (pyloudnorm), then peak-limited below full scale."""
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate, block_size=min(0.4, len(wave) / sample_rate))
    loudness = meter.integrated_loudness(wave.astype(np.float64))
    if not np.isfinite(loudness):
        return wave
    out = pyloudnorm.normalize.loudness(wave.astype(np.float64), loudness, target_lufs)
    peak = float(np.max(np.abs(out)))
    if peak > 0.99:
        out = out * (0.99 / peak)
    return out.astype(np.float32)
