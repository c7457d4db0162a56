"""Students: a pretrained smaller Whisper, or layers cut from the teacher (distil-whisper style).

A cut student is built from a fresh config with fewer layers and the chosen teacher layers'
weights: slicing the teacher's ModuleList would keep the teacher's `layer_idx` numbering, which
breaks the key/value cache in `generate`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from transformers import WhisperForConditionalGeneration

from whisper_kdq.errors import UserError
from whisper_kdq.models.refs import LoadedModel, load_model


@dataclass
class StudentSpec:
    """How to make the student. Either `pretrained` (a model reference) or a cut of the teacher."""

    pretrained: str | None = None
    encoder_layers: int | None = None  # None: keep them all
    decoder_layers: int | None = None
    encoder_map: list[int] | None = None  # explicit teacher layers (overrides the count)
    decoder_map: list[int] | None = None
    freeze_encoder: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Student:
    loaded: LoadedModel
    encoder_map: list[int] | None  # teacher layer of each student layer (None: pretrained student)
    decoder_map: list[int] | None
    frozen_encoder: bool
    notes: list[str] = field(default_factory=list)

    def layer_map(self) -> dict:
        return {"encoder": self.encoder_map, "decoder": self.decoder_map, "frozen_encoder": self.frozen_encoder}


def spaced_layers(n_teacher: int, n_student: int) -> list[int]:
    """`n_student` teacher layers, maximally spaced, first and last kept (6 of 6 -> all, 2 of 6 -> 0, 5)."""
    if not 1 <= n_student <= n_teacher:
        raise UserError(f"a student needs between 1 and {n_teacher} layers here, got {n_student}")
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def parse_map(text: str | None, n_teacher: int, what: str) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--student-{what}-map {text!r}: expected comma-separated layer numbers, e.g. 0,2,5") from None
    if any(not 0 <= i < n_teacher for i in layers):
        raise UserError(f"--student-{what}-map {text!r}: the teacher's {what} has layers 0-{n_teacher - 1}")
    if layers != sorted(set(layers)):
        raise UserError(f"--student-{what}-map {text!r}: layers must be distinct and increasing")
    return layers


def check_vocabularies(teacher: LoadedModel, student: LoadedModel) -> None:
    """Logit distillation compares token distributions: both must use the same vocabulary."""
    tv, sv = teacher.model.config.vocab_size, student.model.config.vocab_size
    t_tok, s_tok = teacher.processor.tokenizer, student.processor.tokenizer
    same = tv == sv and len(t_tok) == len(s_tok) and all(
        t_tok.convert_tokens_to_ids(t) == s_tok.convert_tokens_to_ids(t)
        for t in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "hello", "ja"))
    if not same:
        raise UserError(f"teacher {teacher.ref!r} and student {student.ref!r} have different vocabularies "
                        f"({tv} vs {sv} tokens; e.g. an .en model with a multilingual one): distillation needs the same tokenizer")


def _copy_layers(dst: torch.nn.ModuleList, src: torch.nn.ModuleList, chosen: list[int]) -> None:
    for i, j in enumerate(chosen):
        dst[i].load_state_dict(src[j].state_dict())


def cut_student(teacher: LoadedModel, encoder_map: list[int], decoder_map: list[int]) -> LoadedModel:
    """A student of the teacher's width with the given teacher layers (all other weights copied)."""
    config = copy.deepcopy(teacher.model.config)
    config.encoder_layers, config.decoder_layers = len(encoder_map), len(decoder_map)
    student = WhisperForConditionalGeneration(config)
    t = teacher.model.model
    s = student.model
    # Everything outside the blocks (convs, embeddings, final norms) is copied whole.
    outside = {k: v for k, v in teacher.model.state_dict().items() if ".layers." not in k}
    missing, unexpected = student.load_state_dict(outside, strict=False)
    assert not unexpected and all(".layers." in k for k in missing), (missing, unexpected)
    _copy_layers(s.encoder.layers, t.encoder.layers, encoder_map)
    _copy_layers(s.decoder.layers, t.decoder.layers, decoder_map)
    student.generation_config = copy.deepcopy(teacher.model.generation_config)
    student.to(teacher.model.device).eval()
    params = sum(p.numel() for p in student.parameters())
    return LoadedModel(student, teacher.processor, f"cut of {teacher.ref}", "transformers", None, 4 * params,
                       {"encoder_map": encoder_map, "decoder_map": decoder_map})


def make_student(teacher: LoadedModel, spec: StudentSpec, device: str = "cpu") -> Student:
    """The student `spec` describes, checked against the teacher."""
    if spec.pretrained is not None:
        if spec.encoder_map or spec.decoder_map or spec.encoder_layers or spec.decoder_layers:
            raise UserError("give either --student REF or --student-encoder/decoder-layers/maps, not both")
        loaded = load_model(spec.pretrained, device=device)
        check_vocabularies(teacher, loaded)
        return Student(loaded, None, None, spec.freeze_encoder)
    cfg = teacher.model.config
    enc = spec.encoder_map or spaced_layers(cfg.encoder_layers, spec.encoder_layers or cfg.encoder_layers)
    dec = spec.decoder_map or spaced_layers(cfg.decoder_layers, spec.decoder_layers or cfg.decoder_layers)
    if spec.freeze_encoder and enc != list(range(cfg.encoder_layers)):
        raise UserError("--freeze-encoder copies the whole teacher encoder; drop --student-encoder-layers/map")
    return Student(cut_student(teacher, enc, dec), enc, dec, spec.freeze_encoder)
