"""Decoding speed in the CTranslate2 engine, split into its two parts: the encoder and the token loop.

    python benchmarks/speed.py --model runs/speed/teacher-ct2-fp32:float32 --model runs/speed/student:int8 \
        [--data corpus/manifest.jsonl --split test] [--threads 2] [--window 30] [--out runs/speed/speed.json]

Each --model is a CTranslate2 directory (`whisper-kdq export --format ct2`) with an optional compute type
after a colon. Every model decodes the same clips in the same batches (by language, longest first, 8 per
batch: the batches of `whisper-kdq evaluate`), greedily, with the same runaway guard, and is timed in two
parts: `encode` (the mel window, 30 s unless `--window`, through the encoder) and `generate` from the encoded features
(the decoder's token loop). Log-mel features are computed once, before any timing: they cost the same for
every model. `--window S` pads the clips to S seconds instead of Whisper's 30 (the same window for every
model: CTranslate2's encoder takes any length up to 30 s, the way whisper.cpp's `--audio-ctx` does; faster-whisper
always pads to 30 s). The first batch is decoded once untimed (warm-up). Prints a table and writes JSON (machine,
date, commit, per-model timings, CER ja / WER en of the hypotheses) with the first model as the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from whisper_kdq.data.audio import SAMPLE_RATE  # noqa: E402
from whisper_kdq.data.manifest import load_dataset  # noqa: E402
from whisper_kdq.evaluate.decode import _batches, token_limit  # noqa: E402
from whisper_kdq.errors import UserError  # noqa: E402
from whisper_kdq.evaluate.metrics import score  # noqa: E402
from whisper_kdq.evaluate.window import windowed_extractor  # noqa: E402
from whisper_kdq.models.tokenizer import build_processor  # noqa: E402


def time_model(model_dir: Path, compute_type: str, batches: list, features: list, prompts: list, limits: list,
               threads: int) -> dict:
    import ctranslate2

    engine = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type=compute_type, intra_threads=threads)
    tok = build_processor(model_dir / "tokenizer.json", num_mel_bins=engine.n_mels).tokenizer
    ids = [tok.convert_tokens_to_ids(p) for p in prompts]

    def run(k: int) -> tuple[float, float, list]:
        storage = ctranslate2.StorageView.from_array(features[k])
        t0 = time.perf_counter()
        encoded = engine.encode(storage, to_cpu=False)
        t1 = time.perf_counter()
        results = engine.generate(encoded, [ids[k]] * len(batches[k]), beam_size=1, max_length=limits[k] + len(ids[k]))
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, [r.sequences_ids[0] for r in results]

    run(0)  # warm-up: allocations, the first-call cost of the kernels
    encode_s = generate_s = 0.0
    tokens = 0
    hypotheses: dict[int, str] = {}
    for k, batch in enumerate(batches):
        e, g, sequences = run(k)
        encode_s += e
        generate_s += g
        for i, seq in zip(batch, sequences):
            tokens += len(seq)
            hypotheses[i] = tok.decode(seq, skip_special_tokens=True).strip()
    return {"model": str(model_dir), "compute_type": compute_type, "model_bytes": (model_dir / "model.bin").stat().st_size,
            "encode_s": encode_s, "generate_s": generate_s, "tokens": tokens, "hypotheses": hypotheses}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="CTranslate2 directory[:compute type] (repeatable)")
    p.add_argument("--data", type=Path, default=ROOT / "corpus" / "manifest.jsonl")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="first N clips only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--window", type=float, default=30.0, help="seconds of audio per encoder window, every model")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: print only)")
    a = p.parse_args(argv)

    dataset = load_dataset(a.data, split=a.split, limit=a.limit)
    utts = dataset.utterances
    if not utts:
        print(f"error: {a.data}: no utterances in split {a.split!r}", file=sys.stderr)
        return 2
    audio = [u.load() for u in utts]
    audio_s = sum(len(x) for x in audio) / SAMPLE_RATE
    batches = _batches(utts, a.batch_size)
    first = Path(a.model[0].rsplit(":", 1)[0])
    extractor = build_processor(first / "tokenizer.json").feature_extractor
    try:
        extractor = windowed_extractor(extractor, a.window, audio)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    features = [np.ascontiguousarray(extractor([audio[i] for i in b], sampling_rate=SAMPLE_RATE,
                                               return_tensors="np").input_features.astype(np.float32)) for b in batches]
    prompts = [["<|startoftranscript|>", f"<|{utts[b[0]].language}|>", "<|transcribe|>", "<|notimestamps|>"]
               for b in batches]
    limits = [token_limit([audio[i] for i in b]) for b in batches]

    rows = []
    for spec in a.model:
        path, _, compute = spec.partition(":")
        row = time_model(Path(path), compute or "default", batches, features, prompts, limits, a.threads)
        for language in sorted({u.language for u in utts}):
            idx = [i for i, u in enumerate(utts) if u.language == language]
            s = score([utts[i].text for i in idx], [row["hypotheses"][i] for i in idx], language)
            row[f"cer_{language}"], row[f"wer_{language}"] = s.cer, s.wer
        del row["hypotheses"]
        row["rtf"] = (row["encode_s"] + row["generate_s"]) / audio_s
        row["ms_per_token"] = 1000 * row["generate_s"] / max(1, row["tokens"])
        rows.append(row)

    ref = rows[0]
    print(f"{len(utts)} clips, {audio_s:.0f} s of audio, {len(batches)} batches, {a.threads} threads, "
          f"{a.window:g}-s window")
    print("| model | compute | MB | encode s | generate s | tokens | ms/token | RTF | speed-up total | encoder | "
          "token loop | CER ja % | WER en % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        total, ref_total = r["encode_s"] + r["generate_s"], ref["encode_s"] + ref["generate_s"]
        r["speedup_total"] = ref_total / total
        r["speedup_encoder"] = ref["encode_s"] / r["encode_s"]
        r["speedup_token_loop"] = (ref["generate_s"] / ref["tokens"]) / (r["generate_s"] / r["tokens"])
        cer, wer = r.get("cer_ja"), r.get("wer_en")
        print(f"| {Path(r['model']).name} | {r['compute_type']} | {r['model_bytes'] / 1e6:.1f} | {r['encode_s']:.1f} | "
              f"{r['generate_s']:.1f} | {r['tokens']} | {r['ms_per_token']:.2f} | {r['rtf']:.3f} | "
              f"{r['speedup_total']:.2f}x | {r['speedup_encoder']:.2f}x | {r['speedup_token_loop']:.2f}x | "
              f"{'' if cer is None else f'{100 * cer:.2f}'} | {'' if wer is None else f'{100 * wer:.2f}'} |")
    if a.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}", "threads": a.threads,
                "date": time.strftime("%Y-%m-%d"), "commit": commit, "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
                "clips": len(utts), "audio_s": audio_s, "window_s": a.window}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
