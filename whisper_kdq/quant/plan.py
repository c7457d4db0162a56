"""Who gets which bits: a plan is an ordered list of (tensor-name regex -> spec or float) rules.

A tensor is a candidate when its name ends in `.weight` and it has two or more dimensions
(linears, convolutions, the token embedding); biases and norms always stay float. The default spec
applies first, then every matching rule in order (the last match wins); a rule may give only
some fields (say `bits`), which are merged onto what the tensor had so far. See docs/PLAN.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from whisper_kdq.errors import UserError
from whisper_kdq.quant.schemes import GRANULARITIES, SCHEMES, QuantSpec, parse_spec

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "COMPONENTS", "Rule", "RowRule", "Plan", "load_plan", "plan_from_options",
           "parse_override", "candidate_tensors", "spec_from_fields"]

PLAN_FORMAT = "whisper-kdq-plan"
PLAN_VERSION = 1
CLIP_METHODS = ("mse", "max", "output")
# Component name -> regex over transformers parameter names (WhisperForConditionalGeneration).
COMPONENTS = {
    "conv": r"^model\.encoder\.conv[12]\.weight$",
    "encoder": r"^model\.encoder\.layers\.",
    "decoder": r"^model\.decoder\.layers\.",
    "embedding": r"^model\.decoder\.embed_tokens\.weight$",
}
# Positional tables are kept float unless a later rule says otherwise (whisper.cpp does the same;
# they are position-wise lookups, not matrix products, and small).
BUILTIN_FLOAT = r"\.embed_positions\.weight$"
_FIELDS = ("scheme", "bits", "granularity", "group_size", "symmetric", "full_range", "scale_bits")
FLOATS = ("f32", "f16")  # how a packed file stores the float tensors (biases, norms, float weights)
CODECS = ("none", "xz")  # how it stores the bit-packed codes: as they are, or each code stream xz-compressed


@dataclass(frozen=True)
class Rule:
    pattern: str
    fields: dict  # partial QuantSpec fields; empty with float_=True means "keep float"
    float_: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_re", re.compile(self.pattern))
        except re.error as exc:
            raise UserError(f"{self.source or 'rule'}: bad regex {self.pattern!r} ({exc})") from None

    def matches(self, name: str) -> bool:
        return self._re.search(name) is not None  # type: ignore[attr-defined]

    def as_dict(self) -> dict:
        return {"pattern": self.pattern, **({"float": True} if self.float_ else self.fields)}


@dataclass(frozen=True)
class RowRule:
    """Listed rows of the matching (quantized) tensors get `bits`, the other rows keep the tensor's spec."""

    pattern: str
    bits: int
    rows: tuple[int, ...]
    note: str = ""

    def as_dict(self) -> dict:
        return {"pattern": self.pattern, "bits": self.bits, "rows": list(self.rows), **({"note": self.note} if self.note else {})}


@dataclass
class Plan:
    default: QuantSpec | None
    rules: list[Rule] = field(default_factory=list)
    clip: str = "mse"  # clipping search: mse (weight error), max (none), output (needs calibration)
    activation_bits: int | None = None  # inputs of quantized linear layers rounded per token (None: float)
    row_rules: list[RowRule] = field(default_factory=list)  # e.g. the token embedding's frequent rows
    floats: str = "f32"  # f16 halves the float tensors' bytes (whisper's own weights are fp16)
    codec: str = "none"  # xz: trained codes are far from uniform (~13 % smaller; format version 7)

    def resolve(self, state: dict[str, torch.Tensor]) -> dict[str, QuantSpec | None]:
        """Spec (None = float) of every candidate tensor in `state`, in state order."""
        out = {}
        builtin = Rule(BUILTIN_FLOAT, {}, True, "builtin")
        for name in candidate_tensors(state):
            spec = self.default
            for rule in [builtin, *self.rules]:
                if not rule.matches(name):
                    continue
                if rule.float_:
                    spec = None
                else:
                    spec = spec_from_fields(_merged(spec or self.default or QuantSpec(), rule.fields), rule.source)
            out[name] = spec
        return out

    def splits(self, state: dict[str, torch.Tensor]) -> dict:
        """`{tensor name: RowSplit}` for every quantized tensor a row rule matches (the last match wins). A tensor
        the plan keeps float stays float: a plan restricted to part of a model (`distill --encoder-only`) keeps
        its row rules."""
        from whisper_kdq.quant.rows import RowSplit

        out = {}
        for name, spec in self.resolve(state).items():
            rule = next((r for r in reversed(self.row_rules) if re.search(r.pattern, name)), None)
            if rule is None or spec is None:
                continue
            if rule.rows and rule.rows[-1] >= state[name].shape[0]:
                raise UserError(f"plan.rows: row {rule.rows[-1]} is out of range for {name} ({state[name].shape[0]} rows)")
            if rule.rows:
                out[name] = RowSplit(rule.rows, replace(spec, bits=rule.bits))
        return out

    def as_dict(self) -> dict:
        out = {"format": PLAN_FORMAT, "version": PLAN_VERSION,
               "default": None if self.default is None else self.default.as_dict(),
               "clip": self.clip, "rules": [r.as_dict() for r in self.rules]}
        if self.activation_bits is not None:
            out["activations"] = {"bits": self.activation_bits}
        if self.row_rules:
            out["rows"] = [r.as_dict() for r in self.row_rules]
        if self.floats != "f32":
            out["floats"] = self.floats
        if self.codec != "none":
            out["codec"] = self.codec
        return out

    def save(self, path: Path) -> None:
        from whisper_kdq.fileio import write_text_atomic

        write_text_atomic(Path(path), json.dumps(self.as_dict(), indent=2) + "\n")


def candidate_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    return [n for n, t in state.items() if n.endswith(".weight") and t.dim() >= 2 and n != "proj_out.weight"]


def _merged(spec: QuantSpec, fields: dict) -> dict:
    """A rule's partial fields over the spec a tensor had so far."""
    out = {**spec.as_dict(), **_gran(fields)}
    if "full_range" not in fields and not (out["scheme"] == "uniform" and out["symmetric"] is not False):
        out["full_range"] = False  # a rule asking for offsets or APoT leaves the full range
    return out


def _gran(fields: dict) -> dict:
    # A group size alone implies groups; a granularity other than groups drops the group size.
    out = dict(fields)
    if out.get("group_size") and "granularity" not in out:
        out["granularity"] = "group"
    if out.get("granularity") in ("per-tensor", "per-channel"):
        out["group_size"] = None
    return out


def spec_from_fields(fields: dict, where: str = "plan") -> QuantSpec:
    if "spec" in fields:
        if not isinstance(fields["spec"], str):
            raise UserError(f"{where}.spec: expected a string like uniform4g128")
        return parse_spec(fields["spec"])
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise UserError(f"{where}: unknown field {sorted(unknown)[0]!r}: use {', '.join(_FIELDS)}, spec or float")
    checks = {"scheme": (str, f"one of {', '.join(SCHEMES)}"), "bits": (int, "an integer 1-8"),
              "granularity": (str, f"one of {', '.join(GRANULARITIES)}"), "group_size": ((int, type(None)), "an integer or null"),
              "symmetric": ((bool, type(None)), "true or false"), "full_range": (bool, "true or false"),
              "scale_bits": (int, "16 or 8")}
    for key, value in fields.items():
        kind, what = checks[key]
        if not isinstance(value, kind) or (key in ("bits", "scale_bits") and isinstance(value, bool)):
            raise UserError(f"{where}.{key}: expected {what}, got {json.dumps(value)}")
    try:
        return QuantSpec(**_gran(fields))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def load_plan(path: Path) -> Plan:
    """Read a plan JSON file (docs/PLAN.md); errors name the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"plan file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    return plan_from_dict(data, str(path))


def plan_from_dict(data: object, where: str = "plan") -> Plan:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object")
    if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
        raise UserError(f"{where}.format: expected {PLAN_FORMAT!r}, got {data.get('format')!r}")
    if data.get("version", PLAN_VERSION) != PLAN_VERSION:
        raise UserError(f"{where}.version: unsupported plan version {data.get('version')!r} (this tool reads {PLAN_VERSION})")
    unknown = set(data) - {"format", "version", "default", "rules", "clip", "note", "selection", "activations", "rows", "floats",
                         "codec"}
    if unknown:
        raise UserError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    default = data.get("default")
    if default is not None and not isinstance(default, dict):
        raise UserError(f"{where}.default: expected an object or null")
    spec = None if default is None else spec_from_fields(default, f"{where}.default")
    clip = data.get("clip", "mse")
    if clip not in CLIP_METHODS:
        raise UserError(f"{where}.clip: expected one of {', '.join(CLIP_METHODS)}, got {json.dumps(clip)}")
    rules_in = data.get("rules", [])
    if not isinstance(rules_in, list):
        raise UserError(f"{where}.rules: expected a list")
    rules = []
    for i, item in enumerate(rules_in):
        at = f"{where}.rules[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("pattern"), str):
            raise UserError(f"{at}.pattern: expected an object with a string pattern")
        rest = {k: v for k, v in item.items() if k not in ("pattern", "note")}
        if rest.pop("float", False) is True:
            if rest:
                raise UserError(f"{at}: a float rule takes no other fields")
            rules.append(Rule(item["pattern"], {}, True, at))
            continue
        if not rest:
            raise UserError(f"{at}: give at least one of {', '.join(_FIELDS)}, spec, or float: true")
        spec_from_fields(_merged(spec or QuantSpec(), rest), at)  # validate now, name the field
        rules.append(Rule(item["pattern"], rest, False, at))
    return Plan(spec, rules, clip, _activation_bits(data.get("activations"), f"{where}.activations"),
                _row_rules(data.get("rows", []), f"{where}.rows"), _floats(data.get("floats", "f32"), f"{where}.floats"),
                _choice(data.get("codec", "none"), CODECS, f"{where}.codec"))


def _floats(value: object, where: str) -> str:
    return _choice(value, FLOATS, where)


def _choice(value: object, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise UserError(f"{where}: expected one of {', '.join(allowed)}, got {json.dumps(value)}")
    return value


def _row_rules(value: object, where: str) -> list[RowRule]:
    if not isinstance(value, list):
        raise UserError(f"{where}: expected a list of {{\"pattern\", \"bits\", \"rows\"}} objects")
    out = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or set(item) - {"pattern", "bits", "rows", "note"} or not isinstance(item.get("pattern"), str):
            raise UserError(f"{at}: expected {{\"pattern\": REGEX, \"bits\": 2-8, \"rows\": [row indices]}}")
        Rule(item["pattern"], {}, True, at)  # the regex check
        bits, rows = item.get("bits"), item.get("rows")
        if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
            raise UserError(f"{at}.bits: expected an integer 2-8, got {json.dumps(bits)}")
        if not isinstance(rows, list) or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in rows):
            raise UserError(f"{at}.rows: expected a list of row indices (integers >= 0)")
        out.append(RowRule(item["pattern"], bits, tuple(sorted(set(rows))), str(item.get("note", ""))))
    return out


def _activation_bits(value: object, where: str) -> int | None:
    from whisper_kdq.quant.activations import check_activation_bits

    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"bits", "note"} or "bits" not in value:
        raise UserError(f"{where}: expected null or {{\"bits\": 4-8}}")
    return check_activation_bits(value["bits"], f"{where}.bits")


def parse_override(text: str) -> Rule:
    """`REGEX=BITS`, `REGEX=float` or `REGEX=<spec>` (e.g. `fc1=3`, `embed_tokens=float`, `k_proj=apot4g64`)."""
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise UserError(f"--override {text!r}: expected REGEX=BITS (e.g. 'decoder.*fc1=3') or REGEX=float")
    where = f"--override {text!r}"
    if value.lower() in ("float", "none"):
        return Rule(pattern, {}, True, where)
    if value.isdigit():
        spec_from_fields({"bits": int(value)}, where)
        return Rule(pattern, {"bits": int(value)}, False, where)
    return Rule(pattern, parse_spec(value).as_dict(), False, where)


def plan_from_options(bits: int = 8, scheme: str = "uniform", group_size: int | None = None,
                      granularity: str | None = None, symmetric: bool | None = None,
                      component_bits: dict[str, int | None] | None = None,
                      overrides: list[str] | None = None, clip: str | None = None, base: Plan | None = None,
                      activation_bits: int | None = None, full_range: bool = False, scale_bits: int = 16,
                      floats: str | None = None, codec: str | None = None) -> Plan:
    """The plan the CLI flags describe. Without a group size, 8 bits are per-channel (CTranslate2's
    int8 layout) and fewer bits use groups of 128 (per-channel 4-bit collapses whisper-base)."""
    clip = clip or (base.clip if base is not None else "mse")
    if clip not in CLIP_METHODS:
        raise UserError(f"--clip: expected one of {', '.join(CLIP_METHODS)}, got {clip!r}")
    if granularity is None:
        granularity = "group" if group_size else ("per-channel" if bits == 8 else "group")
    if granularity == "group" and not group_size:
        group_size = 128
    default = spec_from_fields({"scheme": scheme, "bits": bits, "granularity": granularity,
                                "group_size": group_size, "symmetric": symmetric, "full_range": full_range,
                                "scale_bits": scale_bits}, "options")
    plan = Plan(default, [], clip) if base is None else replace(base, rules=list(base.rules), clip=clip, row_rules=list(base.row_rules))
    if base is not None and scale_bits != 16 and plan.default is not None:  # the flag applies over a plan file too
        plan.default = replace(plan.default, scale_bits=scale_bits)
    if floats is not None:
        plan.floats = _floats(floats, "--floats")
    if codec is not None:
        plan.codec = _choice(codec, CODECS, "--codec")
    # The conv front-end is 0.3 % of whisper-base and feeds everything: 8 bits unless told otherwise.
    # (A flag left unset arrives as None: it must not erase that default.)
    given = {k: b for k, b in (component_bits or {}).items() if b is not None}
    component_bits = {**({"conv": 8} if base is None else {}), **given}
    for name, b in component_bits.items():
        if name not in COMPONENTS:
            raise UserError(f"unknown component {name!r}: use one of {', '.join(COMPONENTS)}")
        where = f"--{name}-bits"
        if b == 0:
            plan.rules.append(Rule(COMPONENTS[name], {}, True, where))
            continue
        spec_from_fields({**(plan.default or default).as_dict(), "bits": b}, where)
        plan.rules.append(Rule(COMPONENTS[name], {"bits": b}, False, where))
    for text in overrides or []:
        plan.rules.append(parse_override(text))
    if activation_bits is not None:
        from whisper_kdq.quant.activations import check_activation_bits

        plan.activation_bits = check_activation_bits(activation_bits, "--act-bits")
    return plan
