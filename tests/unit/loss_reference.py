"""Today's loss (higgs_train/loss.py before the sync-free rewrite), kept verbatim as the reference the optimised loss
must equal: tests/unit/test_loss_reference.py compares values and gradients to 1e-6 relative in fp32."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass(frozen=True)
class LabelTokenCounts:
    """Label-token counts of one batch, or (after summing) of a whole optimizer step over all workers."""

    text: int
    audio: int

    def __add__(self, other: LabelTokenCounts) -> LabelTokenCounts:
        return LabelTokenCounts(self.text + other.text, self.audio + other.audio)

    def to_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Pack as a LongTensor for ``torch.distributed.all_reduce(SUM)``."""
        return torch.tensor([self.text, self.audio], dtype=torch.long, device=device)

    @classmethod
    def from_tensor(cls, packed: torch.Tensor) -> LabelTokenCounts:
        """Inverse of ``to_tensor`` (also after an all-reduce)."""
        text, audio = (int(x) for x in packed.tolist())
        return cls(text, audio)


@dataclass
class LossOutput:
    """Result of ``compute_higgs_audio_loss``.

    Only ``total`` carries gradient; the component tensors are detached so logging them never keeps the graph
    alive. Components are normalised as in the module formula (unweighted); ``*_token_loss`` are this batch's
    per-token means for human-readable logging. ``audio_tokens`` counts (row, codebook) label entries.
    """

    total: torch.Tensor
    text_loss: torch.Tensor
    audio_loss: torch.Tensor
    per_codebook_loss: torch.Tensor  # (K,) this batch's mean CE per codebook (0 where a codebook has no labels)
    text_tokens: int
    audio_tokens: int
    audio_correct: list[int]  # per codebook: top-1 prediction equals the next code
    audio_counted: list[int]  # per codebook: label entries scored
    text_audio_ratio: float  # (w_text * text_loss) / (w_audio * audio_loss); inf / nan when the audio side is 0
    text_token_loss: float
    audio_token_loss: float
    text_loss_weight: float
    audio_loss_weight: float


# --------------------------------------------------------------------------------------------------------------------
# Targets and counts (no forward pass needed)
# --------------------------------------------------------------------------------------------------------------------


def _segment_lengths(audio_out_ids_start: torch.Tensor, total_columns: int) -> torch.Tensor:
    starts = audio_out_ids_start.long()
    ends = torch.cat([starts[1:], starts.new_tensor([total_columns])])
    return ends - starts


def audio_next_code_targets(label_audio_ids: torch.Tensor, audio_out_ids_start: torch.Tensor) -> torch.Tensor:
    """(N, K) targets for ``audio_logits`` rows: row t gets label column t + 1 of its own segment, else -100.

    The last row of every segment is set to -100 explicitly instead of trusting that the next segment starts with a
    -100 column (it does with the stock collator, not with ``disable_audio_codes_transform``).
    """
    num_codebooks, num_columns = label_audio_ids.shape
    targets = label_audio_ids.new_full((num_columns, num_codebooks), IGNORE_INDEX)
    if num_columns == 0:
        return targets
    targets[:-1] = label_audio_ids[:, 1:].T
    starts = audio_out_ids_start.to(label_audio_ids.device).long()
    last_rows = torch.cat([starts[1:] - 1, starts.new_tensor([num_columns - 1])])
    targets[last_rows[last_rows >= 0]] = IGNORE_INDEX
    return targets


def trained_segment_mask(label_audio_ids: torch.Tensor, audio_out_ids_start: torch.Tensor) -> torch.Tensor:
    """(num_segments,) bool: segment has at least one audio label (False = context, e.g. the reference audio)."""
    num_columns = label_audio_ids.shape[1]
    starts = audio_out_ids_start.to(label_audio_ids.device).long()
    lengths = _segment_lengths(starts, num_columns)
    segment_of_column = torch.repeat_interleave(torch.arange(len(starts), device=starts.device), lengths)
    has_label = (label_audio_ids != IGNORE_INDEX).any(0).long()
    per_segment = torch.zeros(len(starts), dtype=torch.long, device=starts.device)
    per_segment.index_add_(0, segment_of_column, has_label)
    return per_segment > 0


def count_label_tokens(batch: Any, *, audio_out_token_id: int | None = None) -> LabelTokenCounts:
    """This batch's label counts without a forward pass (sum them over micro-batches and workers for the step).

    ``batch`` is anything with ``label_ids`` (B, L), ``label_audio_ids`` (K, N) and ``audio_out_ids_start``
    attributes, e.g. upstream ``HiggsAudioBatchInput``; ``input_ids`` is needed with ``audio_out_token_id``.

    * text: positions t with ``label_ids[:, t + 1] != -100`` (the same shift the loss applies to the merged
      sequence). Merging only inserts -100 positions (expanded audio) and padding, so this equals the count from
      ``expanded_labels``. ``<|AUDIO_OUT|>`` positions are excluded when the token id is given, because the merged
      sequence replaces them with -100 even if the collator kept their label (``mask_audio_out_token_label=False``).
    * audio: (row, codebook) entries with a target, see ``audio_next_code_targets``.
    """
    text = 0
    label_ids = getattr(batch, "label_ids", None)
    if label_ids is not None and label_ids.shape[-1] > 1:
        shifted = label_ids[:, 1:]
        valid = shifted != IGNORE_INDEX
        input_ids = getattr(batch, "input_ids", None)
        if audio_out_token_id is not None and input_ids is not None:
            valid &= input_ids[:, 1:] != audio_out_token_id
        text = int(valid.sum())

    audio = 0
    label_audio_ids = getattr(batch, "label_audio_ids", None)
    starts = getattr(batch, "audio_out_ids_start", None)
    has_audio = label_audio_ids is not None and starts is not None and label_audio_ids.numel() > 0
    if has_audio:
        audio = int((audio_next_code_targets(label_audio_ids, starts) != IGNORE_INDEX).sum())
    return LabelTokenCounts(text=text, audio=audio)


def _as_counts(value: LabelTokenCounts | Mapping[str, int] | None) -> LabelTokenCounts | None:
    if value is None or isinstance(value, LabelTokenCounts):
        return value
    return LabelTokenCounts(text=int(value["text"]), audio=int(value["audio"]))


def _denominator(local: int, global_count: int | None, name: str) -> int:
    """Global count if given, else local; a global count below the local one means it was not summed correctly."""
    if global_count is None:
        return max(local, 1)
    if global_count < local:
        raise ValueError(
            f"num_label_tokens.{name}={global_count} is smaller than this batch's own count {local}; it must be the "
            "sum over every micro-batch of the optimizer step on every worker (see count_label_tokens)"
        )
    return max(global_count, 1)


def _normalised_codebook_weights(
    codebook_weights: Sequence[float] | torch.Tensor | None, num_codebooks: int, device: torch.device
) -> torch.Tensor:
    if codebook_weights is None or len(codebook_weights) == 0:
        return torch.ones(num_codebooks, device=device)
    weights = torch.as_tensor(codebook_weights, dtype=torch.float32, device=device).flatten()
    if weights.numel() != num_codebooks:
        raise ValueError(f"codebook_weights has {weights.numel()} entries, the model has {num_codebooks} codebooks")
    if bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError(f"codebook_weights must be non-negative with a positive sum, got {weights.tolist()}")
    return weights * (num_codebooks / weights.sum())


# --------------------------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------------------------


def _text_ce_sum(logits: torch.Tensor, expanded_labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of CE(logits[:, t], labels[:, t + 1]); only valid positions are gathered, so a 128k vocabulary costs
    memory for the few label tokens, not for the whole sequence."""
    targets = expanded_labels[:, 1:].to(logits.device)
    valid = targets != IGNORE_INDEX
    count = int(valid.sum())
    if count == 0:
        return logits.sum() * 0.0, 0
    selected = logits[:, :-1][valid].float()
    return F.cross_entropy(selected, targets[valid], reduction="sum"), count


def _audio_ce_sums(
    audio_logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-codebook CE sums, label counts and top-1 correct counts for (N, K, C) logits and (N, K) targets."""
    num_codebooks = audio_logits.shape[1]
    targets = targets.to(audio_logits.device)
    valid = targets != IGNORE_INDEX
    codebook = valid.nonzero(as_tuple=True)[1]
    selected = audio_logits[valid].float()
    sums = torch.zeros(num_codebooks, dtype=torch.float32, device=audio_logits.device)
    if selected.shape[0] > 0:
        ce = F.cross_entropy(selected, targets[valid], reduction="none")
        sums = sums.index_add(0, codebook, ce)
        correct = torch.bincount(codebook[selected.argmax(-1) == targets[valid]], minlength=num_codebooks)
    else:
        sums = sums + audio_logits.sum() * 0.0  # keep the graph connected for an all-context batch
        correct = torch.zeros(num_codebooks, dtype=torch.long, device=audio_logits.device)
    counts = torch.bincount(codebook, minlength=num_codebooks)
    return sums, counts, correct


# --------------------------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------------------------


def _safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, with inf for x / 0 and nan for 0 / 0 so logs show which side was missing."""
    if denominator > 0:
        return numerator / denominator
    return math.inf if numerator > 0 else math.nan


def compute_higgs_audio_loss(
    outputs: Any,
    batch: Any,
    *,
    text_loss_weight: float = 1.0,
    audio_loss_weight: float = 1.0,
    codebook_weights: Sequence[float] | torch.Tensor | None = None,
    num_label_tokens: LabelTokenCounts | Mapping[str, int] | None = None,
) -> LossOutput:
    """Weighted text + audio loss of one (micro-)batch; see the module docstring for the formula.

    ``outputs``: model output with ``logits``, ``expanded_labels`` and ``audio_logits``. ``batch``: has
    ``label_audio_ids`` and ``audio_out_ids_start``. ``num_label_tokens``: global counts of the optimizer step
    (``LabelTokenCounts`` or a dict with ``text``/``audio``); None = this batch's counts. A component with weight 0
    contributes nothing to ``total`` (it is still computed without grad for logging).
    """
    counts = _as_counts(num_label_tokens)
    logits = getattr(outputs, "logits", None)
    audio_logits = getattr(outputs, "audio_logits", None)
    device = logits.device if logits is not None else audio_logits.device
    zero = torch.zeros((), device=device)
    pieces: list[torch.Tensor] = []

    # --- text ---
    expanded_labels = getattr(outputs, "expanded_labels", None)
    if logits is None or expanded_labels is None:
        if text_loss_weight > 0:
            raise ValueError("text_loss_weight > 0 needs outputs.logits and outputs.expanded_labels (pass label_ids)")
        text_sum, text_tokens = zero, 0
    else:
        with torch.set_grad_enabled(torch.is_grad_enabled() and text_loss_weight > 0):
            text_sum, text_tokens = _text_ce_sum(logits, expanded_labels)
    text_loss = text_sum / _denominator(text_tokens, counts.text if counts else None, "text")
    if text_loss_weight > 0:
        pieces.append(text_loss_weight * text_loss)

    # --- audio ---
    label_audio_ids = getattr(batch, "label_audio_ids", None)
    starts = getattr(batch, "audio_out_ids_start", None)
    has_audio = audio_logits is not None and label_audio_ids is not None and starts is not None
    if has_audio and audio_logits.shape[0] != label_audio_ids.shape[1]:
        raise ValueError(
            f"audio_logits has {audio_logits.shape[0]} rows but label_audio_ids has {label_audio_ids.shape[1]} columns"
        )
    if has_audio and audio_logits.shape[0] > 0:
        num_codebooks = audio_logits.shape[1]
        targets = audio_next_code_targets(label_audio_ids, starts)
        with torch.set_grad_enabled(torch.is_grad_enabled() and audio_loss_weight > 0):
            cb_sums, cb_counts, cb_correct = _audio_ce_sums(audio_logits, targets)
        weights = _normalised_codebook_weights(codebook_weights, num_codebooks, cb_sums.device)
        audio_sum = (weights * cb_sums).sum()
        audio_tokens = int(cb_counts.sum())
        per_codebook = (cb_sums / cb_counts.clamp(min=1)).detach()
        audio_correct, audio_counted = cb_correct.tolist(), cb_counts.tolist()
    else:
        if audio_loss_weight > 0 and not has_audio:
            raise ValueError(
                "audio_loss_weight > 0 needs outputs.audio_logits, batch.label_audio_ids and batch.audio_out_ids_start"
            )
        num_codebooks = audio_logits.shape[1] if audio_logits is not None and audio_logits.dim() == 3 else 8
        audio_sum, audio_tokens = zero, 0
        per_codebook = torch.zeros(num_codebooks, device=device)
        audio_correct, audio_counted = [0] * num_codebooks, [0] * num_codebooks
    audio_loss = audio_sum / _denominator(audio_tokens, counts.audio if counts else None, "audio")
    if audio_loss_weight > 0:
        pieces.append(audio_loss_weight * audio_loss)

    total = torch.stack(pieces).sum() if pieces else zero
    weighted_text = text_loss_weight * float(text_loss.detach())
    weighted_audio = audio_loss_weight * float(audio_loss.detach())
    ratio = _safe_ratio(weighted_text, weighted_audio)
    return LossOutput(
        total=total,
        text_loss=text_loss.detach(),
        audio_loss=audio_loss.detach(),
        per_codebook_loss=per_codebook,
        text_tokens=text_tokens,
        audio_tokens=audio_tokens,
        audio_correct=audio_correct,
        audio_counted=audio_counted,
        text_audio_ratio=ratio,
        text_token_loss=float(text_sum.detach()) / max(text_tokens, 1),
        audio_token_loss=float(audio_sum.detach()) / max(audio_tokens, 1),
        text_loss_weight=float(text_loss_weight),
        audio_loss_weight=float(audio_loss_weight),
    )


def audio_next_code_accuracy(loss_outputs: LossOutput | Sequence[LossOutput]) -> list[float]:
    """Per-codebook top-1 next-code accuracy, pooled over one or many (validation) batches; nan = no labels.

    Pooling counts (not averaging per-batch accuracies) weights every label entry equally across batches.
    """
    items = [loss_outputs] if isinstance(loss_outputs, LossOutput) else list(loss_outputs)
    if not items:
        return []
    num_codebooks = len(items[0].audio_counted)
    correct = [sum(o.audio_correct[k] for o in items) for k in range(num_codebooks)]
    counted = [sum(o.audio_counted[k] for o in items) for k in range(num_codebooks)]
    return [c / n if n else math.nan for c, n in zip(correct, counted, strict=True)]
