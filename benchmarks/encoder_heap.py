"""Audio seconds encoded per CPU second with and without the encoder actors' heap reuse, measured in one run.

Why: glibc hands every block above its mmap threshold (32 MiB at most) fresh pages and unmaps them on free, and
upstream's audio tokenizer allocates blocks of tens to hundreds of MB on every clip; the encoder actors therefore
call ``clip_encoder.keep_freed_memory_for_reuse`` (``pipeline_stages.PreprocessActor``). This prints what that buys
and costs: each mode runs in a fresh child process (the setting is process-wide), encodes every clip once to warm
up, then times the best of two passes with one torch thread, and reports the peak RSS.

    python benchmarks/encoder_heap.py            # the real-size audio tokenizer (random weights), built once
    python benchmarks/encoder_heap.py --tiny     # the embedded tiny tokenizer (seconds; what CI can afford)

Clip sets: the sample data's own clips (mixed lengths), 8 clips of exactly 10 s, and 8 clips of exactly 2 s also
stacked into one encoder call (``ClipEncoder`` stacks only clips of equal length).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(mode: str, tiny: bool) -> dict:
    """One process: optionally keep freed memory for reuse, then encode each clip set; figures as a dict."""
    from higgs_train.embedded.layout import default_home

    if not tiny:
        os.environ["HF_HUB_CACHE"] = str(default_home() / "bench-hf-cache")
    applied = None
    if mode == "reuse":
        from higgs_train.data.clip_encoder import keep_freed_memory_for_reuse

        applied = keep_freed_memory_for_reuse()
    import numpy as np
    import torch

    from higgs_train.data.audio_io import AudioLimits, load_audio
    from higgs_train.embedded.sample_data import create_sample_data
    from higgs_train.model_loading import load_audio_tokenizer, resolve_paths

    torch.set_num_threads(1)
    if tiny:
        path = resolve_paths("embedded", "embedded").audio_tokenizer_path
    else:
        path = str(default_home() / "bench-audio-tokenizer-real")
        if not (Path(path) / "higgs_train_generated.json").exists():
            from higgs_train.embedded.audio_codec import build_audio_tokenizer_dir

            build_audio_tokenizer_dir(Path(path), size="real")
    tok = load_audio_tokenizer(path, "cpu")
    rate = tok.sampling_rate
    work = Path(tempfile.mkdtemp(prefix="encoder-heap-"))
    sample = create_sample_data(work, utterances_per_speaker=4)
    urls = sorted({str(p.relative_to(work)) for p in (work / "audio").rglob("*.wav")})
    own = [load_audio(u, work, rate, AudioLimits()) for u in urls]
    rng = np.random.default_rng(0)
    ten = [(0.1 * rng.standard_normal(10 * rate)).astype(np.float32) for _ in range(8)]
    two = [(0.1 * rng.standard_normal(2 * rate)).astype(np.float32) for _ in range(8)]
    del sample

    def per_cpu_second(run, seconds: float) -> float:
        run()  # warm-up: first calls allocate, and the first clip of a length is special upstream
        best = min(_timed(run) for _ in range(2))
        return round(seconds / best, 3)

    with torch.inference_mode():
        out = {
            "mode": mode,
            "applied": applied,
            "sample_clips": per_cpu_second(lambda: [tok.encode(w, rate) for w in own], sum(map(len, own)) / rate),
            "ten_s_clips": per_cpu_second(lambda: [tok.encode(w, rate) for w in ten], 80.0),
            "two_s_clips": per_cpu_second(lambda: [tok.encode(w, rate) for w in two], 16.0),
            "two_s_stacked": per_cpu_second(
                lambda: tok._xcodec_encode(torch.from_numpy(np.stack(two))[:, None, :]), 16.0
            ),
        }
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def _timed(run) -> float:
    start = time.process_time()
    run()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the embedded tiny tokenizer instead of the real size")
    parser.add_argument("--child", choices=("default", "reuse"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tiny)))
        return
    results = {}
    for mode in ("default", "reuse"):
        argv = [sys.executable, __file__, "--child", mode, *(["--tiny"] if args.tiny else [])]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    base, reuse = results["default"], results["reuse"]
    print(f"{'audio s per CPU s':<22}{'default':>10}{'reuse':>10}{'ratio':>8}")
    for key in ("sample_clips", "ten_s_clips", "two_s_clips", "two_s_stacked"):
        print(f"{key:<22}{base[key]:>10.3f}{reuse[key]:>10.3f}{reuse[key] / base[key]:>7.2f}x")
    print(f"{'peak RSS (GiB)':<22}{base['peak_rss_gib']:>10.2f}{reuse['peak_rss_gib']:>10.2f}")
    stacked = reuse["two_s_stacked"] / reuse["two_s_clips"]
    print(f"8 x 2 s stacked vs one by one, with reuse: {stacked:.2f}x")
    print(json.dumps({"default": base, "reuse": reuse, "stacked_vs_one_by_one": round(stacked, 3)}))


if __name__ == "__main__":
    main()
