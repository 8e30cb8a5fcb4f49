"""The loss-balance monitor of the training loop: warns when one loss component starves the others.

It reads the ``LossOutput`` of every (micro-)step; the loss itself lives in ``higgs_train.loss``.
"""

from __future__ import annotations

from collections import deque

from higgs_train.loss import LossOutput


class LossBalanceMonitor:
    """Warns when one loss component dominates the gradient, or is zero because its labels are missing.

    Why weighted, normalised contributions and not per-token losses: in the cloning layout a sample has only ~3
    text labels (``<|audio_out_bos|>``, ``<|audio_eos|>``, ``<|eot_id|>`` of the target turn; headers and the
    prompt are masked) against ~25 frames/s x 8 codebooks of audio labels, and its per-token CE scale differs from the
    audio one (log V text vs log 1026 audio at init). Because each component is divided by its own token count,
    the gradient share of a component is its weight times its normalised loss, whatever the token counts; so
    ``w_text * text_loss`` vs ``w_audio * audio_loss`` (averaged over ``window`` updates) is what says whether one
    stream starves the other. Averaging over a window makes the check meaningful per micro-step as well: under the
    global normalisation micro-step values are fractions of the step's, and the ratio of window means is unchanged.

    An audio-dominance warning is suppressed while the text per-token CE is below ``solved_text_token_loss``: the
    text labels are structural tokens that become near-deterministic early, and a small text contribution then
    means "learned", not "starved". Each distinct warning repeats at most once per ``window`` updates.
    """

    def __init__(
        self,
        text_dominance_threshold: float = 10.0,
        audio_dominance_threshold: float = 10.0,
        window: int = 50,
        solved_text_token_loss: float = 0.05,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.text_dominance_threshold = text_dominance_threshold
        self.audio_dominance_threshold = audio_dominance_threshold
        self.window = window
        self.solved_text_token_loss = solved_text_token_loss
        self._text: deque[float] = deque(maxlen=window)
        self._audio: deque[float] = deque(maxlen=window)
        self._text_token_loss: deque[float] = deque(maxlen=window)
        self._step = 0
        self._last_fired: dict[str, int] = {}

    def _fire(self, key: str, message: str, out: list[str]) -> None:
        last = self._last_fired.get(key)
        if last is None or self._step - last >= self.window:
            self._last_fired[key] = self._step
            out.append(message)

    def update(self, loss_output: LossOutput) -> list[str]:
        """Record one (micro-)batch; return the warnings to log now (empty when balanced)."""
        self._step += 1
        warnings: list[str] = []
        lo = loss_output
        if lo.text_loss_weight > 0 and lo.text_tokens == 0:
            self._fire(
                "no_text",
                f"text loss is 0 although text_loss_weight={lo.text_loss_weight:g}: the batch has no text label "
                "tokens (no assistant turn at/after start_index?); the model is not taught to open/close audio",
                warnings,
            )
        if lo.audio_loss_weight > 0 and lo.audio_tokens == 0:
            self._fire(
                "no_audio",
                f"audio loss is 0 although audio_loss_weight={lo.audio_loss_weight:g}: every audio-out segment is "
                "context (all labels -100); check start_index so the target audio is trained",
                warnings,
            )
        if lo.text_tokens > 0 and lo.audio_tokens > 0 and lo.text_loss_weight > 0 and lo.audio_loss_weight > 0:
            self._text.append(lo.text_loss_weight * float(lo.text_loss))
            self._audio.append(lo.audio_loss_weight * float(lo.audio_loss))
            self._text_token_loss.append(lo.text_token_loss)
        if len(self._text) < self.window:
            return warnings
        text = sum(self._text) / len(self._text)
        audio = sum(self._audio) / len(self._audio)
        text_token = sum(self._text_token_loss) / len(self._text_token_loss)
        if text <= 0 or audio <= 0:
            return warnings
        if text > self.text_dominance_threshold * audio:
            self._fire(
                "text_dominates",
                f"text dominates the gradient: weighted text loss {text:.4g} is {text / audio:.1f}x the weighted audio "
                f"loss {audio:.4g} (threshold {self.text_dominance_threshold:g}x, last {self.window} updates); the "
                "audio codebooks get little signal - lower text_loss_weight or raise audio_loss_weight",
                warnings,
            )
        elif audio > self.audio_dominance_threshold * text and text_token >= self.solved_text_token_loss:
            self._fire(
                "audio_dominates",
                f"audio dominates the gradient: weighted audio loss {audio:.4g} is {audio / text:.1f}x the weighted "
                f"text loss {text:.4g} (threshold {self.audio_dominance_threshold:g}x, last {self.window} updates) "
                f"while text tokens are not learned yet ({text_token:.3g} nats/token); the audio_out_bos/audio_eos/"
                "eot tokens that start and stop speech get little signal - raise text_loss_weight",
                warnings,
            )
        return warnings
