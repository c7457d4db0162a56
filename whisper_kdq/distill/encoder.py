"""A shallower encoder, trained to reproduce the teacher's encoder output.

The encoder is most of Whisper's decoding time: it runs on a 30-second window whatever the clip's length
(81 % of whisper-base's time in CTranslate2 on a CPU, docs/BENCHMARKS.md), so a faster student needs fewer
encoder blocks. Training a cut encoder through the whole model (a decoder forward and backward per step)
is a GPU job; this module trains it by regression instead, which a CPU affords:

- the first `frozen` teacher blocks are kept as they are, and their output is computed once per clip;
  with none frozen the convolution front-end trains too, and the log-mel features are what is kept;
- each trained block starts as a copy of a teacher block (`init`) and learns to reproduce the teacher's
  hidden state after block `targets[i]` (the last one: the encoder output after the final layer norm,
  which is what the decoder's cross-attention reads);
- the decoder is the teacher's, untouched: the student decodes as well as its encoder output is close.

The distance is ‖h_s − h_t‖² / ‖h_t‖² per frame (hidden-state KD in `losses` divides summed errors by
summed norms instead: here every frame weighs the same, loud or quiet), averaged over all 1500 frames
(the decoder attends to the padding frames too) plus the same average over the frames that hold audio
(5-s clips are one sixth of the window, and they carry the speech).

With a quantization plan (`encoder_plan`) the trained part is fake-quantized (`quant.fake`): block-wise
regression is then quantization-aware training of the encoder at a fraction of the cost of training it
through the decoder, and the packed student's encoder codes are where a decoder's training can start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from whisper_kdq.data.manifest import Utterance
from whisper_kdq.distill.data import FeatureMemo
from whisper_kdq.errors import UserError
from whisper_kdq.fileio import atomic_file
from whisper_kdq.quant.plan import Plan, Rule


@dataclass
class EncoderCut:
    """Which teacher blocks the student's encoder keeps (frozen), starts from and imitates (trained)."""

    frozen: int  # teacher blocks 0 .. frozen-1, kept as they are
    init: list[int]  # the teacher block each trained block starts from
    targets: list[int] = field(default_factory=list)  # the teacher block each trained block imitates

    def __post_init__(self) -> None:
        if not self.init:
            raise UserError("a cut encoder needs at least one trained block")
        if not self.targets:
            # Spread the remaining teacher blocks evenly; the last trained block ends where the teacher does.
            self.targets = [-1] * len(self.init)
        if len(self.targets) != len(self.init):
            raise UserError("give one target block per trained block")

    def resolve(self, n_teacher: int) -> "EncoderCut":
        m = len(self.init)
        # Unset targets (-1) spread the teacher blocks after the frozen ones evenly over the trained blocks.
        targets = [t if t >= 0 or i == m - 1 else self.frozen - 1 + math.ceil((i + 1) * (n_teacher - self.frozen) / m)
                   for i, t in enumerate(self.targets)]
        if targets[-1] == -1 or targets[-1] == n_teacher - 1:
            targets[-1] = n_teacher - 1  # the last trained block ends where the teacher does: its output
        else:
            raise UserError(f"the last trained block imitates the teacher's output (block {n_teacher - 1}), "
                            f"not block {targets[-1]}")
        blocks = self.init + targets + [self.frozen - 1] if self.frozen else self.init + targets
        if any(not 0 <= b < n_teacher for b in blocks) or targets != sorted(set(targets)) or targets[0] < self.frozen:
            raise UserError(f"bad encoder cut for a {n_teacher}-block teacher: frozen {self.frozen}, "
                            f"init {self.init}, targets {targets}")
        return EncoderCut(self.frozen, list(self.init), targets)

    @property
    def encoder_map(self) -> list[int]:
        """The student's blocks as teacher block numbers (for `cut_student`)."""
        return list(range(self.frozen)) + list(self.init)

    @property
    def trains_front_end(self) -> bool:
        """With no frozen block the convolutions train too: the blocks' input is then the student's own."""
        return self.frozen == 0

    def trained_weights(self) -> str:
        """A regex over the student's parameter names matching what trains (its blocks, its convolutions)."""
        blocks = "|".join(str(k) for k in range(self.frozen, self.frozen + len(self.init)))
        front = "conv[12]|" if self.trains_front_end else ""
        return rf"^model\.encoder\.(?:{front}layers\.(?:{blocks}))\."


def embed(encoder, features: torch.Tensor) -> torch.Tensor:
    """The encoder's convolution front-end and positions: its first block's input."""
    x = torch.nn.functional.gelu(encoder.conv1(features))
    x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    return x + encoder.embed_positions.weight[: x.shape[1]]


def run_blocks(blocks, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's output, in order."""
    out = []
    for block in blocks:
        x = block(x, None)
        x = x[0] if isinstance(x, tuple) else x
        out.append(x)
    return out


def encoder_plan(plan: Plan, cut: EncoderCut) -> Plan:
    """`plan` restricted to what trains in `cut` (the rest of the student stays float here: the teacher's
    decoder, and the frozen blocks whose output the targets hold)."""
    rest = Rule(f"^(?!{cut.trained_weights()[1:]})", {}, True, "encoder-only")
    return replace(plan, rules=[*plan.rules, rest])


@torch.no_grad()
def teacher_states(encoder, features: torch.Tensor, cut: EncoderCut) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the trained part's input: the frozen blocks' output, or the features where the front-end trains;
    the teacher's hidden state at each target) for a batch of features."""
    x = embed(encoder, features)
    outs = run_blocks(encoder.layers, x)
    start = features if cut.trains_front_end else outs[cut.frozen - 1]
    targets = [outs[t] for t in cut.targets[:-1]] + [encoder.layer_norm(outs[-1])]
    return start, targets


def frame_distance(student: torch.Tensor, teacher: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean over all frames plus mean over audio frames of ‖s − t‖² / ‖t‖² ([B, F, D] each)."""
    d = (student - teacher).pow(2).sum(-1) / teacher.pow(2).sum(-1).clamp_min(1e-6)
    audio = torch.arange(d.shape[1], device=d.device).unsqueeze(0) < frames.to(d.device).unsqueeze(1)
    return d.mean() + (d * audio).sum() / audio.sum().clamp_min(1)


class EncoderTargets:
    """Per clip: the trained part's input and the teacher's targets, in float16, computed once."""

    def __init__(self, cut: EncoderCut, teacher: str = "", window_s: float | None = None) -> None:
        self.cut = cut
        self.teacher = teacher  # the teacher's reference: a file for another teacher is refused
        self.window_s = window_s  # the audio window the targets were computed at; None is Whisper's 30 s
        self.rows: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def fill(self, teacher_encoder, utterances: Sequence[Utterance], memo: FeatureMemo, batch_size: int = 8,
             progress: Callable[[int], None] | None = None) -> None:
        todo = [u for u in utterances if u.id not in self.rows]
        for k in range(0, len(todo), batch_size):
            chunk = todo[k:k + batch_size]
            feats, frames = memo(chunk)
            device = next(teacher_encoder.parameters()).device
            start, targets = teacher_states(teacher_encoder, feats.to(device), self.cut)
            start, stacked = start.half().cpu(), torch.stack(targets, 1).half().cpu()  # kept in memory, not on a GPU
            for i, u in enumerate(chunk):
                self.rows[u.id] = (start[i].clone(), stacked[i].clone(), int(frames[i]))
            if progress:
                progress(len(chunk))

    def batch(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = [self.rows[i] for i in ids]
        return (torch.stack([r[0] for r in rows]).float(), torch.stack([r[1] for r in rows]).float(),
                torch.tensor([r[2] for r in rows]))

    def save(self, path: Path) -> None:
        with atomic_file(Path(path)) as tmp:
            torch.save({"cut": vars(self.cut), "teacher": self.teacher, "window_s": self.window_s,
                        "start": _START[self.cut.trains_front_end], "rows": self.rows}, tmp)

    @classmethod
    def load(cls, path: Path, cut: EncoderCut, teacher: str = "", window_s: float | None = None) -> "EncoderTargets":
        try:
            data = torch.load(path, weights_only=True)
        except Exception as exc:  # truncated or not ours: say which file, the user can delete it
            raise UserError(f"cannot read encoder targets {path} ({type(exc).__name__}); delete it to recompute") from None
        if data["cut"] != vars(cut):
            raise UserError(f"{path} holds targets for another cut ({data['cut']}), not {vars(cut)}")
        if data.get("start", "hidden") != _START[cut.trains_front_end]:  # files of before the front-end trained
            raise UserError(f"{path} holds the embedding's output as the blocks' input, this run trains the "
                            "convolutions and needs the features: delete it to recompute")
        if data.get("teacher", teacher) != teacher:  # files written before the field was added are not checked
            raise UserError(f"{path} holds targets of teacher {data.get('teacher')!r}, not {teacher!r}")
        if data.get("window_s") != window_s:  # every target differs in length and value
            from whisper_kdq.evaluate.window import window_name

            raise UserError(f"{path} holds targets for {window_name(data.get('window_s'))}, this run reads "
                            f"{window_name(window_s)}: give it another --teacher-cache file")
        out = cls(cut, teacher, window_s)
        out.rows = data["rows"]
        return out


_START = {True: "features", False: "hidden"}  # what a targets file keeps as the trained part's input


def student_loss(trained_blocks, final_norm, start: torch.Tensor, targets: torch.Tensor,
                 frames: torch.Tensor, front_end=None) -> torch.Tensor:
    """Sum over trained blocks of their distance to their targets ([B, n_targets, F, D]); `front_end` (the
    student's encoder, when its convolutions train) turns features into the first block's input."""
    outs = run_blocks(trained_blocks, start if front_end is None else embed(front_end, start))
    outs[-1] = final_norm(outs[-1])
    return sum(frame_distance(o, targets[:, i], frames) for i, o in enumerate(outs))
