"""Training loss for Higgs-Audio v2: text next-token and audio next-code (8 codebooks).

Upstream's ``HiggsAudioModel.forward`` returns logits but computes no loss, so the shift, the masking and the
normalisation all live here. Layout facts this module relies on (verified against boson_multimodal 0.1.1):

* ``outputs.logits`` (B, S, V) and ``outputs.expanded_labels`` (B, S) cover the *merged* sequence (audio placeholders
  expanded, padded to a multiple of 8); labels are aligned with the logits and NOT shifted, and every audio position
  is -100. The text target of position t is ``expanded_labels[:, t + 1]``. The collator's ``label_ids`` has another
  length and must not be compared with the logits.
* ``outputs.audio_logits`` (N, K, C) has one row per column of the batch's ``audio_out_ids`` (K, N); segments are
  concatenated sample by sample and ``audio_out_ids_start`` gives each one's first column. ``label_audio_ids`` (K, N)
  holds, per segment, ``[-100, codes..., EOS]`` delayed per codebook (codebook k shifted right by k, -100 fill), and
  is all -100 for a context segment (the voice-cloning reference). The target of row t is label column t + 1 of the
  *same* segment: the last row of a segment has no target, and pairing it with the next segment's first column
  would train the model to predict an unrelated segment.
* The *input* column t holds the code that row t was fed; predicting it back (an echo) is a copy leak, and the
  shift above makes such a model score badly (tests/unit/test_loss.py keeps that check).

Normalisation (why ``num_label_tokens`` exists): every component is a SUM over label tokens divided by the number of
label tokens of the whole optimizer step over all data-parallel workers, so the summed gradient of all micro-steps
and workers equals the gradient of one big batch no matter how it was split. Per-micro-batch means would instead
weight a token in a short micro-batch more than one in a long micro-batch.

    total = w_text  * sum_text_CE / N_text
          + w_audio * sum_k(v_k * sum_audio_CE_k) / N_audio

* ``N_text``: shifted text targets (positions t with ``label[t + 1] != -100``) of the global step.
* ``N_audio``: audio label entries summed over codebooks, i.e. (row, codebook) pairs with a target; a trained
  segment of n codes contributes ``K * (n + 1)`` (n codes plus EOS per codebook).
* ``v_k``: codebook weights rescaled to sum to K, so equal weights give ``v_k = 1`` and the audio loss is the mean CE
  over all entries (= mean over codebooks of each codebook's mean CE); re-weighting codebooks then changes emphasis
  between codebooks without silently changing the audio-vs-text balance or the effective learning rate.

No voice term: an earlier hidden-state consistency term (``1 - cos`` of mean reference vs target audio states) was
removed because it did not measure voice (trained alone it reached ~0.0001 for cross-speaker pairs as well); voice is
measured on generated audio by ``higgs_train.evaluation`` (``--eval_rows``, ``--checkpoint_metric sim``).

Without ``num_label_tokens`` this batch's own counts are used, which is the plain per-token mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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
    audio_correct: list[int]  # per codebook: top-1 prediction equals the next code (empty with host_metrics=False)
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
    weights = torch.as_tensor(codebook_weights, dtype=torch.float32).cpu().flatten()  # checked on the host
    if weights.numel() != num_codebooks:
        raise ValueError(f"codebook_weights has {weights.numel()} entries, the model has {num_codebooks} codebooks")
    if bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError(f"codebook_weights must be non-negative with a positive sum, got {weights.tolist()}")
    return (weights * (num_codebooks / weights.sum())).to(device, non_blocking=True)


# --------------------------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------------------------


def _text_ce_sum(
    logits: torch.Tensor, expanded_labels: torch.Tensor, text_head: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, int]:
    """Sum of CE(logits[:, t], labels[:, t + 1]) over the labelled positions.

    With ``text_head``, ``logits`` are the final hidden states (B, S, H) and the head is applied to the labelled
    positions only: a 128k-way head costs FLOPs and memory for the few text labels, not for every position. One
    ``nonzero`` finds the positions (the only host sync here).
    """
    targets = expanded_labels[:, 1:].to(logits.device)
    rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    count = rows.numel()
    if count == 0:
        return logits.sum() * 0.0, 0
    selected = logits[rows, cols]
    if text_head is not None:
        selected = text_head(selected)
    return F.cross_entropy(selected.float(), targets[rows, cols], reduction="sum"), count


def _audio_ce_sums(
    audio_logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-codebook CE sums, label counts and top-1 correct counts for (N, K, C) logits and (N, K) targets.

    No host sync: CE runs over every (row, codebook) entry with ``ignore_index`` (ignored entries give 0 and no
    gradient) instead of gathering the labelled entries, whose number the host would have to wait for. The counts
    are computed where ``targets`` live (the host, in the trainer); sums and correct counts on the logits' device.
    """
    counts = (targets != IGNORE_INDEX).sum(0)
    targets = targets.to(audio_logits.device, non_blocking=True)
    ce = F.cross_entropy(
        audio_logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    )
    sums = ce.view(targets.shape).sum(0)
    correct = ((audio_logits.argmax(-1) == targets) & (targets != IGNORE_INDEX)).sum(0)
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
    text_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    host_metrics: bool = True,
) -> LossOutput:
    """Weighted text + audio loss of one (micro-)batch; see the module docstring for the formula.

    ``outputs``: model output with ``logits``, ``expanded_labels`` and ``audio_logits``. ``batch``: has
    ``label_audio_ids`` and ``audio_out_ids_start``. ``num_label_tokens``: global counts of the optimizer step
    (``LabelTokenCounts`` or a dict with ``text``/``audio``); None = this batch's counts. A component with weight 0
    contributes nothing to ``total`` (it is still computed without grad for logging).

    ``text_head``: the model's text head when ``outputs.logits`` holds the final hidden states instead of logits
    (``higgs_train.training.text_head``); it is applied to the labelled positions only. ``host_metrics=False``
    skips the per-batch figures that need device values on the host (``text_audio_ratio``, ``*_token_loss`` are
    nan, ``audio_correct`` is empty), so a training step never waits for the device here except for the one
    ``nonzero`` of the text labels; keep the label tensors of ``batch`` on the host so their bookkeeping stays
    there too.
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
            text_sum, text_tokens = _text_ce_sum(logits, expanded_labels, text_head)
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
        per_codebook = (cb_sums / cb_counts.clamp(min=1).to(cb_sums.device, non_blocking=True)).detach()
        audio_correct, audio_counted = (cb_correct.tolist() if host_metrics else []), cb_counts.tolist()
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
    ratio, text_token_loss, audio_token_loss = math.nan, math.nan, math.nan
    if host_metrics:
        weighted_text = text_loss_weight * float(text_loss.detach())
        weighted_audio = audio_loss_weight * float(audio_loss.detach())
        ratio = _safe_ratio(weighted_text, weighted_audio)
        text_token_loss = float(text_sum.detach()) / max(text_tokens, 1)
        audio_token_loss = float(audio_sum.detach()) / max(audio_tokens, 1)
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
        text_token_loss=text_token_loss,
        audio_token_loss=audio_token_loss,
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
