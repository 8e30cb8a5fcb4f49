"""Throughput of ``prepare_data.py build``: minutes of audio processed per wall-clock second, first run and rerun.

Why: the builder is meant for 100 h corpora; its per-file stage (decode, resample, trim, loudness, WAV) runs on Ray
Data actors, and reruns must skip finished files. This generates ``--minutes`` of speech from the synthetic
speakers as speaker folders (22.05 kHz, so every file is resampled), then builds it three times in one process:
Ray actors (cold), Ray actors again (every file from the content-hash cache), and in-process (``--local``, into a
fresh folder) for comparison. Figures include Ray start-up and each actor's imports; on a loaded machine compare
the ratios, not the absolute numbers.

    python benchmarks/data_builder.py [--minutes 5] [--num_actors 2] [--cpus_per_actor 0.5] [--loudness -23]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def write_corpus(root: Path, minutes: float) -> float:
    import soundfile as sf

    from higgs_train.embedded.voices import SENTENCES, SPEAKERS, synthesize

    seconds, index = 0.0, 0
    while seconds < minutes * 60:
        speaker = SPEAKERS[index % len(SPEAKERS)]
        text = SENTENCES[(index // len(SPEAKERS)) % len(SENTENCES)]
        wave = synthesize(speaker, text, seed=index, sample_rate=22050)
        folder = root / speaker.name
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"utt_{index:05d}.wav", wave, 22050, subtype="PCM_16")
        (folder / f"utt_{index:05d}.txt").write_text(text)
        seconds += len(wave) / 22050
        index += 1
    return seconds


def main() -> None:
    import higgs_train  # noqa: F401  (offline Hugging Face)
    from higgs_train.builder.audio import AudioSettings
    from higgs_train.builder.build import BuildOptions, build_dataset

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--num_actors", type=int, default=2)
    parser.add_argument("--cpus_per_actor", type=float, default=0.5)
    parser.add_argument("--loudness", type=float, default=-23.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seconds = write_corpus(root / "src", args.minutes)
        files = sum(1 for _ in (root / "src").rglob("*.wav"))
        print(f"corpus: {files} files, {seconds / 60:.1f} min of 22.05 kHz speech")
        runs = [("ray, cold", "ray", True), ("ray, rerun (cache)", "ray", True), ("local, cold", "local", False)]
        for label, folder, use_ray in runs:
            out = (root / folder).resolve()
            options = BuildOptions(
                input=str(root / "src"),
                output=str(out),
                audio=AudioSettings(output_dir=str(out), loudness_lufs=args.loudness),
                use_ray=use_ray,
                num_actors=args.num_actors,
                cpus_per_actor=args.cpus_per_actor,
            )
            started = time.perf_counter()
            result = build_dataset(options)
            wall = time.perf_counter() - started
            print(
                f"{label:20s} {wall:7.1f} s  {seconds / wall:6.1f} s of audio per s  "
                f"{result.summary['files_reused_from_cache']:5d} files from cache  "
                f"{result.train_samples} train / {result.val_samples} val samples"
            )


if __name__ == "__main__":
    main()
