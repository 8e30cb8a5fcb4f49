"""Speak: an adapter (or the base model), a voice (a data set's speaker or a reference clip with its transcript)
and a text -> a WAV, with the audio check's verdict (too short for its text, clipped, silent).

The same path as ``ray_jobs/generate.py``: the speaker's clean reference from ``speaker_reference.pick_reference``,
the training prompt layout from ``generation.prompt_for_texts``, ``generation.synthesize``, and
``evaluation.suite.check_audio``. The last loaded model is kept (one at a time, behind a lock): the next sentence
with the same adapter does not load it again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higgs_train.config import TrainingConfig
from higgs_train.data.audio_io import decode_audio
from higgs_train.data.reasons import AudioError
from higgs_train.speaker_reference import ReferenceError, pick_reference
from higgs_train.studio.refusals import StudioRefusal

SPEAK_DIR = "studio_speak"
MAX_TEXT_CHARS = 600
CHARS_PER_SECOND = 14.0  # a typical reading rate; sizes the generation budget from the text


class SpeakError(StudioRefusal):
    """A request that cannot be spoken as given; one line naming the input and what to do."""


@dataclass(frozen=True)
class SpeakRequest:
    """Resolved, checked inputs (absolute paths already inside the roots)."""

    text: str
    adapter: Path | None = None  # None: the base model
    speaker: str = ""
    data: Path | None = None  # the data set folder of ``speaker``
    ref_audio: Path | None = None
    ref_text: str = ""
    temperature: float = 0.7
    seed: int = 0


@dataclass(frozen=True)
class SpeakResult:
    wav: Path
    seconds: float
    problems: list[str]
    voice: str  # what was cloned, for the page


def base_model_of(adapter: Path | None) -> tuple[str, str]:
    """``(model_path, audio_tokenizer_path)`` the adapter was trained on (its saved config), else the embedded stack."""
    saved = adapter / "training_config.yaml" if adapter else None
    if saved is not None and saved.is_file():
        config = TrainingConfig.load(saved)
        return config.model_path, config.audio_tokenizer_path
    return "embedded", "embedded"


class Speaker:
    def __init__(self, output_root: Path) -> None:
        self.folder = Path(output_root) / SPEAK_DIR
        self._lock = threading.Lock()
        self._stack: Any = None
        self._key: tuple | None = None

    def _stack_for(self, adapter: Path | None) -> Any:
        # Deferred on purpose: generation loads torch and transformers (seconds); the Studio starts without them
        # and warms them in the background (``studio.app``), and a refused request never waits for them.
        from higgs_train.adapter import AdapterError
        from higgs_train.generation import load_generation_stack
        from higgs_train.model_loading import ModelFormatError

        model_path, audio_tokenizer_path = base_model_of(adapter)
        key = (str(adapter), model_path, audio_tokenizer_path, _mtime(adapter))
        if self._key != key:
            self._stack = None  # free the previous model before loading the next
            try:
                self._stack = load_generation_stack(model_path, audio_tokenizer_path, adapter=adapter)
            except (AdapterError, ModelFormatError, FileNotFoundError, OSError) as err:
                raise SpeakError(f"adapter {adapter}: {str(err).splitlines()[0] if str(err) else err}") from err
            self._key = key
        return self._stack

    def speak(self, request: SpeakRequest) -> SpeakResult:
        text = request.text.strip()
        if not text or len(text) > MAX_TEXT_CHARS:
            raise SpeakError(f"text: give 1 to {MAX_TEXT_CHARS} characters (got {len(text)})")
        if not request.speaker and not (request.ref_audio is not None and request.ref_text.strip()):
            raise SpeakError("reference: give a speaker of a data set, or a reference clip and its transcript")

        if request.speaker:
            if request.data is None:
                raise SpeakError("speaker: give the data set folder it comes from")
            try:
                ref = pick_reference(request.data, request.speaker)
            except ReferenceError as err:
                raise SpeakError(str(err)) from err
            ref_audio, ref_text, voice = ref.audio_path, ref.text, f"{ref.speaker} ({ref.audio_path.name})"
        else:
            ref_audio, ref_text, voice = request.ref_audio, request.ref_text.strip(), request.ref_audio.name

        try:
            decode_audio(Path(ref_audio))  # the checks the prompt applies, before any model loads
        except (AudioError, OSError) as err:
            raise SpeakError(f"reference {Path(ref_audio).name}: {str(err).splitlines()[0]}") from err
        # Deferred on purpose, as in ``_stack_for``: the checks above answer before torch is imported.
        from higgs_train.evaluation.suite import check_audio
        from higgs_train.generation import SamplingSettings, no_audio_reason, prompt_for_texts, synthesize, write_wav
        from higgs_train.generation_prompt import auto_max_new_tokens

        with self._lock:
            stack = self._stack_for(request.adapter)
            try:
                prompt = prompt_for_texts(stack, ref_audio, ref_text, text)
            except (AudioError, ValueError) as err:
                raise SpeakError(f"reference {ref_audio.name}: {str(err).splitlines()[0]}") from err
            steps = auto_max_new_tokens(max(1.0, len(text) / CHARS_PER_SECOND), 1024)
            settings = SamplingSettings(temperature=request.temperature, seed=request.seed, max_new_tokens=steps)
            result = synthesize(stack, prompt, settings)
            missing = no_audio_reason(stack, result)
        if missing:
            raise SpeakError(missing)
        digest = hashlib.sha256(f"{request}{time.time()}".encode()).hexdigest()[:8]
        wav = write_wav(self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{digest}.wav", result.waveform,
                        result.sampling_rate)  # fmt: skip
        problems = check_audio(result.waveform, result.sampling_rate, text)
        return SpeakResult(wav, len(result.waveform) / result.sampling_rate, problems, voice)


def _mtime(path: Path | None) -> float:
    try:
        return (path / "adapter_model.safetensors").stat().st_mtime if path else 0.0
    except OSError:
        return 0.0
