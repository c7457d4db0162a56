"""The units a layer selection works on: encoder blocks (or their weight matrices), decoder blocks (or
their weight matrices), the token embedding, the convs.

A unit is a set of weight tensors that get the same bits; it is named the way users name layers
(`encoder.3`, `decoder.0`, `embedding`, `conv`) and maps to a regex over transformers parameter
names, which is what a quantization plan is made of.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from whisper_kdq.quant.plan import candidate_tensors


@dataclass
class Unit:
    name: str  # encoder.3 | decoder.0 | embedding | conv
    component: str  # encoder | decoder | embedding | conv
    index: int | None  # block index within its stack
    pattern: str  # regex over parameter names (the plan rule)
    params: int = 0  # quantizable weights in the unit
    quant_loss: float = float("nan")  # output change when only this unit is quantized at low bits
    distill_loss: float = float("nan")  # distance of this student block from its matched teacher block
    teacher_layer: int | None = None  # the matched teacher block (restrained-dynamic match)
    bits: int | None = None  # chosen
    distill: bool = False  # chosen: gets hidden-state distillation
    extra: dict = field(default_factory=dict)

    @property
    def is_block(self) -> bool:
        return self.component in ("encoder", "decoder")

    def as_dict(self) -> dict:
        def num(x: float) -> float | None:
            return None if x != x else round(float(x), 6)

        return {"unit": self.name, "pattern": self.pattern, "params": self.params,
                "quant_loss": num(self.quant_loss), "distill_loss": num(self.distill_loss),
                "teacher_layer": self.teacher_layer, "bits": self.bits, "distill": self.distill}


GRANULARITIES = ("block", "linear")


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        from whisper_kdq.errors import UserError

        raise UserError(f"unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")


def layer_units(model: torch.nn.Module, granularity: str = "block") -> list[Unit]:
    """The units of a WhisperForConditionalGeneration, in forward order, with their weight counts.

    `block`: one unit per encoder/decoder block. `linear`: one unit per weight matrix of a block
    (`encoder.3.fc1`, `decoder.0.encoder_attn.q_proj`, ...), so that bits can follow the matrices a
    quantization error hurts most rather than whole blocks; such a unit keeps its block's index."""
    check_granularity(granularity)
    cfg = model.config
    state = model.state_dict()
    names = candidate_tensors(state)

    def blocks(stack: str, n: int) -> list[Unit]:
        out = []
        for i in range(n):
            prefix = f"model.{stack}.layers.{i}."
            if granularity == "block":
                out.append(Unit(f"{stack}.{i}", stack, i, "^" + re.escape(prefix)))
                continue
            for name in names:  # in the model's own order: self-attention, (cross-attention,) MLP
                if name.startswith(prefix):
                    part = name[len(prefix):].removesuffix(".weight")
                    out.append(Unit(f"{stack}.{i}.{part}", stack, i, "^" + re.escape(name) + "$"))
        return out

    units = [Unit("conv", "conv", None, r"^model\.encoder\.conv[12]\.weight$")]
    units += blocks("encoder", cfg.encoder_layers)
    units.append(Unit("embedding", "embedding", None, r"^model\.decoder\.embed_tokens\.weight$"))
    units += blocks("decoder", cfg.decoder_layers)
    for unit in units:
        rx = re.compile(unit.pattern)
        unit.params = sum(state[n].numel() for n in names if rx.search(n))
    return units
