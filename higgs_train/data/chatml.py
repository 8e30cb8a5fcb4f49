"""The ChatML voice-cloning sample layout: one home for the system prompt and the five-turn cloning sample.

Training data (``sample_data``, the dataset builder) and generation prompts (``generation``) all build samples
here, so the layout the model is trained on is the layout it is prompted with::

    0 system    : system prompt (DEFAULT_SYSTEM_PROMPT unless overridden)
    1 user      : reference transcript
    2 assistant : reference audio   (another utterance of the same speaker)
    3 user      : target text
    4 assistant : target audio      <- start_index = 4: the only trained turn
"""

from __future__ import annotations

# The scene description upstream's examples use for clean speech; the builder's ``--system_prompt`` overrides it.
DEFAULT_SYSTEM_PROMPT = (
    "Generate audio following instruction.\n\n<|scene_desc_start|>\nAudio is recorded from a quiet room.\n"
    "<|scene_desc_end|>"
)
TARGET_TURN = 4


def cloning_sample(
    sample_id: str,
    speaker: str | None,
    ref_text: str,
    ref_audio: str,
    target_text: str,
    target_audio: str,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> dict:
    """One ChatML voice-cloning sample in the documented manifest format."""
    return {
        "id": sample_id,
        "speaker": speaker,
        "start_index": TARGET_TURN,
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": ref_text},
            {"role": "assistant", "content": {"type": "audio", "audio_url": ref_audio}},
            {"role": "user", "content": target_text},
            {"role": "assistant", "content": {"type": "audio", "audio_url": target_audio}},
        ],
    }
