"""How far this machine lets encoder processes scale: 1 vs N processes encoding at once, without Ray, in one run.

Why: ``benchmarks/preprocess_throughput.py`` measures 2 encoder actors against 1 through the whole token-cache
build (Ray Data, decode tasks, the driver). When that ratio falls short of N, this tells whether the build or the
machine is the limit: N plain processes, each exactly like an encoder actor (one torch thread, the actors' heap
reuse, ``clip_encoder.keep_freed_memory_for_reuse``), load the tokenizer, warm up, wait at a common start and
encode the same clips. What they reach together over what one reaches alone is the ceiling for N actors here (cores
that share memory bandwidth, or a host that slows one of them, give less than N).

    python benchmarks/encoder_scaling.py                 # the real-size audio tokenizer (random weights), 10 s clips
    python benchmarks/encoder_scaling.py --tiny          # the embedded tiny tokenizer (seconds)
    python benchmarks/encoder_scaling.py --processes 2 --clip_seconds 3 --clips 8 --rounds 3

Each round runs 1 process, then N at once, so load that drifts during the run touches both; every round's figures
are printed, then the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def tokenizer_path(tiny: bool) -> str:
    """The embedded tokenizer, or the real-size one built once under $HIGGS_TRAIN_HOME (as encoder_heap.py does)."""
    from higgs_train.embedded.layout import default_home
    from higgs_train.model_loading import resolve_paths

    if tiny:
        return resolve_paths("embedded", "embedded").audio_tokenizer_path
    os.environ["HF_HUB_CACHE"] = str(default_home() / "bench-hf-cache")  # its teacher, apart from the tiny one's
    path = default_home() / "bench-audio-tokenizer-real"
    if not (path / "higgs_train_generated.json").exists():
        from higgs_train.embedded.audio_codec import build_audio_tokenizer_dir

        build_audio_tokenizer_dir(path, size="real")
    return str(path)


def child(args: argparse.Namespace) -> None:
    """One encoder process: load and warm up, say ``ready``, wait for ``go`` on stdin, encode, print the figures."""
    import numpy as np
    import torch

    from higgs_train.data.clip_encoder import keep_freed_memory_for_reuse
    from higgs_train.model_loading import load_audio_tokenizer

    torch.set_num_threads(1)
    keep_freed_memory_for_reuse()
    tok = load_audio_tokenizer(tokenizer_path(args.tiny), "cpu")
    rate = int(tok.sampling_rate)
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(int(args.clip_seconds * rate))).astype(np.float32) for _ in range(args.clips)]
    with torch.inference_mode():
        tok.encode(clips[0], rate)  # warm-up: first calls allocate, and a length's first clip is special upstream
        print("ready", flush=True)
        sys.stdin.readline()
        wall, cpu = time.perf_counter(), time.process_time()
        for clip in clips:
            tok.encode(clip, rate)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "audio_seconds": args.clips * args.clip_seconds}), flush=True)


def run_together(count: int, args: argparse.Namespace) -> list[dict]:
    """``count`` children started together once all are loaded and warm; their figures."""
    argv = [sys.executable, __file__, "--child", "--clips", str(args.clips), "--clip_seconds", str(args.clip_seconds)]
    argv += ["--tiny"] if args.tiny else []
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for _ in range(count)
    ]
    for proc in procs:
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"an encoder process failed to start (exit {proc.wait()})")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    out = []
    for proc in procs:
        out.append(json.loads(proc.stdout.readline()))
        proc.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the embedded tiny tokenizer instead of the real size")
    parser.add_argument("--processes", type=int, default=2, help="processes encoding at once (N)")
    parser.add_argument("--clips", type=int, default=6, help="clips each process encodes")
    parser.add_argument("--clip_seconds", type=float, default=10.0, help="length of every clip")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (1 alone, N at once)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    tokenizer_path(args.tiny)  # build the real-size tokenizer once, before any timing
    ratios, rounds = [], []
    for round_index in range(args.rounds):
        alone = run_together(1, args)[0]
        together = run_together(args.processes, args)
        rate_alone = alone["audio_seconds"] / alone["wall"]
        rate_together = sum(r["audio_seconds"] for r in together) / max(r["wall"] for r in together)
        ratios.append(rate_together / rate_alone)
        rounds.append({"alone": alone, "together": together, "ratio": round(ratios[-1], 3)})
        walls = " ".join(f"{r['wall']:.1f}" for r in together)
        print(
            f"round {round_index + 1}: 1 process {rate_alone:.2f} audio s per wall s ({alone['wall']:.1f} s); "
            f"{args.processes} at once {rate_together:.2f} (walls {walls} s): {ratios[-1]:.2f}x   "
            f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
    median = statistics.median(ratios)
    print(f"{args.processes} processes vs 1, median of {args.rounds}: {median:.2f}x (ideal {args.processes}.00x)")
    print(json.dumps({"processes": args.processes, "median_ratio": round(median, 3), "rounds": rounds}))


if __name__ == "__main__":
    main()
