"""Audio seconds encoded per wall second by ``ClipEncoder`` on one device, one clip per call vs clips stacked per call.

Why: the encoding table in the README has a "per GPU" column, and ``--data_actor_gpus`` stacks clips of equal length
into one upstream ``_xcodec_encode`` call (``ClipEncoder.max_batch``) on the claim that a GPU, unlike a CPU core, is
filled only by several clips at once. This measures that claim, and checks the other half of it: that stacked
codes equal the solo codes on that device (on CPU ``tests/unit/test_batched_encoding`` proves it; a GPU picks its
convolution kernels per shape, so it is checked again here, as the fraction of codes equal to the solo ones).

What it runs: the real-size audio tokenizer (random weights in the released on-disk layout, built once under
$HIGGS_TRAIN_HOME by ``benchmarks/encoder_scaling.py``'s ``tokenizer_path``), loaded by the project's loader on ``--device``; for each
clip length, ``--clips`` speech-like clips (``calibration_audio``: seeded source-filter voices) encoded once to warm up, then timed (device synchronised) at each
``--batches`` size, best of ``--repeats``; peak device memory per size on CUDA. Imports nothing from Ray.

    python benchmarks/encode_device.py                          # cuda when available, else cpu
    python benchmarks/encode_device.py --tiny --device cpu      # the embedded tiny tokenizer, seconds

Prints a table and a JSON summary line last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script from anywhere: the repository's higgs_train and its benchmarks
    sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from encoder_scaling import tokenizer_path  # noqa: E402  (the real-size tokenizer, built once, shared by benchmarks)

from higgs_train.data.clip_encoder import ClipEncoder  # noqa: E402
from higgs_train.embedded.audio_codec import calibration_audio  # noqa: E402
from higgs_train.model_loading import load_audio_tokenizer  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pass(encoder: ClipEncoder, waves: dict, urls: dict, device: torch.device) -> tuple[float, dict, int]:
    """Wall seconds of one pass over every clip, the codes by key, and the encoder calls it took."""
    calls_before = encoder.stats.batches
    synchronize(device)
    start = time.perf_counter()
    codes = {key: encoded.codes for key, encoded in encoder.encode_each(waves, urls)}
    synchronize(device)
    return time.perf_counter() - start, codes, encoder.stats.batches - calls_before


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the embedded tiny tokenizer instead of the real size")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--clip_seconds", type=float, nargs="+", default=[2.0, 10.0])
    parser.add_argument("--clips", type=int, default=32, help="clips per length")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tokenizer = load_audio_tokenizer(tokenizer_path(args.tiny), str(device))
    load_seconds = time.perf_counter() - start
    rate = int(tokenizer.sampling_rate)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x {torch.get_num_threads()} threads"
    print(f"audio tokenizer ({'tiny' if args.tiny else 'real size'}) on {name}, loaded in {load_seconds:.1f} s")
    rows = []
    for seconds in args.clip_seconds:
        waves = {f"clip{i:03d}": calibration_audio(rate, seconds, seed=i) for i in range(args.clips)}
        urls = {key: f"{key}.wav" for key in waves}
        audio_seconds = sum(len(wave) for wave in waves.values()) / rate
        solo_codes = None
        for batch in args.batches:
            encoder = ClipEncoder(tokenizer, max_batch=batch)
            timed_pass(encoder, waves, urls, device)  # warm-up: learns the length's pass count, picks kernels
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            passes = [timed_pass(encoder, waves, urls, device) for _ in range(args.repeats)]
            best, codes, calls = min(passes, key=lambda p: p[0])
            if solo_codes is None:
                solo_codes = codes
            equal = sum(int((codes[k] == solo_codes[k]).sum()) for k in waves)
            total = sum(int(solo_codes[k].size) for k in waves)
            row = {
                "clip_seconds": seconds,
                "clips_per_call": batch,
                "encoder_calls": calls,
                "audio_seconds_per_wall_second": round(audio_seconds / best, 2),
                "wall_seconds": round(best, 3),
                "codes_equal_to_solo": round(equal / total, 6),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                if device.type == "cuda"
                else None,
            }
            rows.append(row)
            print(
                f"{seconds:g} s clips, {batch:3d} per call: {row['audio_seconds_per_wall_second']:9.1f} audio s per "
                f"wall s ({best:.3f} s for {audio_seconds:.0f} s; {calls} encoder calls)  codes equal "
                f"to solo {100 * row['codes_equal_to_solo']:.3f}%  peak {row['peak_memory_gib']} GiB",
                flush=True,
            )
    best_by_length = {}
    for seconds in args.clip_seconds:
        mine = [r for r in rows if r["clip_seconds"] == seconds]
        one = next(r for r in mine if r["clips_per_call"] == 1)["audio_seconds_per_wall_second"]
        top = max(mine, key=lambda r: r["audio_seconds_per_wall_second"])
        best_by_length[str(seconds)] = {
            "one_per_call": one,
            "best": top["audio_seconds_per_wall_second"],
            "best_clips_per_call": top["clips_per_call"],
            "speedup": round(top["audio_seconds_per_wall_second"] / one, 2),
        }
    summary = {
        "device": name,
        "tiny": args.tiny,
        "load_seconds": round(load_seconds, 1),
        "best_by_clip_length": best_by_length,
        "runs": rows,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
