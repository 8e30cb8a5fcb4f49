"""Step 3 of the builder: split clips into train/validation and pair each target with same-speaker references.

Rules (each has a test):

* a reference is always a clip of the target's **own speaker** and never the target itself; a speaker with one
  labelled clip cannot be paired and is reported, never paired with someone else;
* choices are deterministic in ``seed``: each candidate gets a rank from a hash of (seed, target, candidate), and
  candidates of 3-10 s (``PREFERRED_REFERENCE_SECONDS``, long enough to carry the voice, short enough to leave
  room for the target) come first;
* ``val_speakers`` holds whole speakers out: their clips are validation targets with references among their own
  clips, and none of their clips appears anywhere in train (zero-shot cloning is measured on them). Otherwise
  ``val_fraction`` of each speaker's clips become validation targets (by clip; ignored when ``val_speakers`` is
  given); train samples then take references only among train clips.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

from higgs_train.builder.audio import Clip
from higgs_train.builder.source_listing import Rejection
from higgs_train.chatml import DEFAULT_SYSTEM_PROMPT, cloning_sample

PREFERRED_REFERENCE_SECONDS = (3.0, 10.0)
SINGLE_CLIP = "speaker has one clip"


@dataclass(frozen=True)
class PairingOptions:
    references_per_target: int = 1
    seed: int = 0
    val_speakers: tuple[str, ...] = ()
    val_fraction: float = 0.1
    system_prompt: str = DEFAULT_SYSTEM_PROMPT


@dataclass(frozen=True)
class Pair:
    target: Clip
    reference: Clip
    split: str  # "train" or "val"

    def sample_id(self) -> str:
        return f"{self.target.key}~{self.reference.key}"


@dataclass
class Pairing:
    train: list[Pair]
    val: list[Pair]
    rejections: list[Rejection]
    val_speakers: list[str]

    def samples(self, split: str, system_prompt: str) -> list[dict]:
        pairs = self.train if split == "train" else self.val
        return [
            cloning_sample(
                p.sample_id(),
                p.target.speaker,
                p.reference.text or "",
                p.reference.audio_url,
                p.target.text or "",
                p.target.audio_url,
                system_prompt=system_prompt,
            )
            for p in pairs
        ]


def _rank(seed: int, *parts: str) -> str:
    return hashlib.sha256("\x00".join([str(seed), *parts]).encode()).hexdigest()


def _preferred(clip: Clip) -> bool:
    low, high = PREFERRED_REFERENCE_SECONDS
    return low <= clip.seconds <= high


def choose_references(target: Clip, candidates: list[Clip], k: int, seed: int) -> list[Clip]:
    """Up to ``k`` references for ``target`` among ``candidates`` (same speaker, never the target)."""
    pool = [c for c in candidates if c.audio_url != target.audio_url and c.speaker == target.speaker]
    pool.sort(key=lambda c: (not _preferred(c), _rank(seed, target.audio_url, c.audio_url)))
    return pool[:k]


def pair_clips(clips: list[Clip], options: PairingOptions) -> Pairing:
    """Split and pair labelled clips; ``clips`` without text are not paired (they are reported upstream)."""
    by_speaker: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        if clip.text:
            by_speaker[clip.speaker].append(clip)
    for group in by_speaker.values():
        group.sort(key=lambda c: c.audio_url)
    rejections: list[Rejection] = []
    for speaker, group in sorted(by_speaker.items()):
        if len(group) < 2:
            rejections.append(
                Rejection(group[0].key, speaker, SINGLE_CLIP, "no other clip of the speaker to reference")
            )
    pairable = {s: g for s, g in by_speaker.items() if len(g) >= 2}
    val_speakers = _val_speakers(sorted(pairable), options)
    k = options.references_per_target
    val_clips = set() if val_speakers else _val_clips(pairable, options)
    train: list[Pair] = []
    val: list[Pair] = []
    for speaker in sorted(pairable):
        group = pairable[speaker]
        if speaker in val_speakers:
            val.extend(Pair(t, r, "val") for t in group for r in choose_references(t, group, k, options.seed))
            continue
        val_targets = [c for c in group if c.audio_url in val_clips]
        train_clips = [c for c in group if c not in val_targets]
        for target in group:
            if target in val_targets:
                val.extend(Pair(target, r, "val") for r in choose_references(target, group, k, options.seed))
            else:
                refs = choose_references(target, train_clips, k, options.seed)
                train.extend(Pair(target, r, "train") for r in refs)
    return Pairing(train, val, rejections, val_speakers)


def _val_speakers(speakers: list[str], options: PairingOptions) -> list[str]:
    """Held-out speakers: the named ones, or, for a single number N, N speakers chosen by ``seed``."""
    chosen = options.val_speakers
    if len(chosen) == 1 and chosen[0].isdigit() and chosen[0] not in speakers:
        count = int(chosen[0])
        if count >= len(speakers):
            raise ValueError(f"--val_speakers {count} leaves no training speaker ({len(speakers)} pairable)")
        return sorted(sorted(speakers, key=lambda s: _rank(options.seed, s))[:count])
    unknown = [s for s in chosen if s not in speakers]
    if unknown:
        raise ValueError(f"--val_speakers names speakers without two labelled clips: {', '.join(unknown)}")
    return list(chosen)


def _val_clips(pairable: dict[str, list[Clip]], options: PairingOptions) -> set[str]:
    """Audio of the by-clip validation targets: ``val_fraction`` of each speaker's clips (rounded), keeping at
    least two per speaker for training references; at least one clip overall when ``val_fraction > 0`` and some
    speaker can spare one, so a small corpus still gets a validation set."""
    chosen: set[str] = set()
    spare: list[Clip] = []
    for group in pairable.values():
        ranked = sorted(group, key=lambda c: _rank(options.seed, "val", c.audio_url))
        count = min(round(len(group) * options.val_fraction), max(0, len(group) - 2))
        chosen.update(c.audio_url for c in ranked[:count])
        if len(group) > 2:
            spare.append(ranked[0])
    if not chosen and options.val_fraction > 0 and spare:
        chosen.add(min(spare, key=lambda c: _rank(options.seed, "val", c.audio_url)).audio_url)
    return chosen
