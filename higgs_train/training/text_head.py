"""Text logits only where a text label is: upstream's text head returns its input while the model runs.

``HiggsAudioModel.forward`` applies ``audio_decoder_proj.text_lm_head`` (3,072 x 128,256 in the released model) to
every position, although in the voice-cloning layout only about four positions per row carry a text label; at 4k
tokens that is 0.4 TFLOP per forward (twice that backward) and a 1 GB logits tensor that the loss then mostly
discards. While ``hidden_states_as_text_logits`` is active, the head instance's forward is the identity (the same
per-instance forward override ``activation_checkpointing`` uses; nothing in boson_multimodal is modified and the
state-dict keys are unchanged), so ``outputs.logits`` holds the final, normed hidden states. The loss then applies
the real head to the labelled positions only (``compute_higgs_audio_loss(..., text_head=head)``), which gives the
same values and gradients (tests/unit/test_loss_reference.py checks both against the full-logits loss).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _identity(hidden_states: torch.Tensor) -> torch.Tensor:
    return hidden_states


def text_head(model: torch.nn.Module) -> torch.nn.Module:
    """The ``text_lm_head`` of the (possibly peft/DDP-wrapped) model's ``HiggsAudioDecoderProjector``."""
    for module in model.modules():
        if module.__class__.__name__ == "HiggsAudioDecoderProjector":
            return module.text_lm_head
    raise ValueError("no HiggsAudioDecoderProjector found inside the given model")


@contextmanager
def hidden_states_as_text_logits(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside the block the model's ``outputs.logits`` are its final hidden states; yields the text head, to be
    called (after the block) on the positions that need logits."""
    head = text_head(model)
    if "forward" in vars(head):
        raise RuntimeError("the text head's forward is already overridden (nested hidden_states_as_text_logits?)")
    head.forward = _identity
    try:
        yield head
    finally:
        del head.forward
