"""How far students' encoder outputs are from the teacher's, per split and voice (docs/BENCHMARKS.md).

For every clip of the chosen splits: ‖h_s − h_t‖² / ‖h_t‖² per frame of the encoder output (after the final
layer norm: what the decoder reads), averaged as the encoder regression measures it (`distill.encoder.
frame_distance`: all frames plus the frames that hold audio), at the window given. Grouped by the manifest's
`split` and `voice` fields, so a voice the training never heard shows as its own row. No decoding: a few
minutes on a CPU where decoding the same clips takes many.

    python benchmarks/encoder_distance.py --data corpus/manifest.jsonl --splits dev,test --window 10 \\
        runs/…-encoder/model.safetensors runs/…/other.safetensors --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from whisper_kdq.data.manifest import load_dataset  # noqa: E402
from whisper_kdq.distill.data import FeatureMemo  # noqa: E402
from whisper_kdq.distill.encoder import embed, frame_distance, run_blocks  # noqa: E402
from whisper_kdq.evaluate.window import window_or_none  # noqa: E402
from whisper_kdq.models.refs import load_model  # noqa: E402


@torch.no_grad()
def encoder_outputs(model, memo: FeatureMemo, utterances, batch_size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(encoder output, frames holding audio) per batch; any window (the blocks see as many positions as frames)."""
    enc = model.model.encoder.eval()
    out = []
    for k in range(0, len(utterances), batch_size):
        feats, frames = memo(utterances[k:k + batch_size])
        out.append((enc.layer_norm(run_blocks(enc.layers, embed(enc, feats))[-1]), frames))
    return out


def distances(student, teacher_out, memo: FeatureMemo, utterances, voices: dict[str, str]) -> dict[str, dict]:
    """{"split/voice": {"n", "mean"}} of the student's per-clip distance to the teacher's output."""
    groups: dict[str, list[float]] = defaultdict(list)
    clips = iter(utterances)
    for (s, frames), (t, _) in zip(encoder_outputs(student, memo, utterances), teacher_out):
        for i in range(s.shape[0]):
            u = next(clips)
            groups[f"{u.split}/{voices.get(u.id, '?')}"].append(float(frame_distance(s[i:i + 1], t[i:i + 1], frames[i:i + 1])))
    return {k: {"n": len(v), "mean": sum(v) / len(v)} for k, v in sorted(groups.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="student references (packed files, directories, …)")
    ap.add_argument("--teacher", default="base")
    ap.add_argument("--data", type=Path, default=Path("corpus/manifest.jsonl"))
    ap.add_argument("--splits", default="dev,test")
    ap.add_argument("--window", type=float, default=30.0, help="seconds of audio the encoders read")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    voices = {r["id"]: r.get("voice", "?") for r in rows}
    splits = args.splits.split(",")
    utterances = [u for u in load_dataset(args.data).utterances if u.split in splits]
    teacher = load_model(args.teacher)
    memo = FeatureMemo(teacher.processor, window_s=window_or_none(args.window))
    teacher_out = encoder_outputs(teacher.model, memo, utterances)
    result = {"teacher": args.teacher, "data": str(args.data), "window_s": args.window, "models": {}}
    for ref in args.models:
        result["models"][ref] = groups = distances(load_model(ref).model, teacher_out, memo, utterances, voices)
        print(ref)
        for key, g in groups.items():
            print(f"  {key:28s} n={g['n']:3d}  distance {g['mean']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
