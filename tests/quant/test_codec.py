"""xz-compressed code streams (format version 7): the same weights in fewer bytes, streams that would not shrink
stored as they are, and headers or streams that claim otherwise refused."""

from __future__ import annotations

import hashlib
import json
import lzma
import struct

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_model, tiny_processor_obj
from tests.quant.test_checkpoint import _rewrite_meta
from whisper_kdq.cli import app
from whisper_kdq.errors import CheckpointError, UserError
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.checkpoint import predict_packed, save_packed
from whisper_kdq.quant.plan import plan_from_dict
from whisper_kdq.quant.reader import read_packed, unpack_tensors

EMB = r"^model\.decoder\.embed_tokens\.weight$"


def _plan(codec="xz", **default):
    return plan_from_dict({"default": {"scheme": "uniform", "bits": 3, "granularity": "group", "group_size": 32,
                                       "full_range": True, **default},
                           "rules": [{"pattern": EMB, "bits": 2}], "codec": codec})


def _save(tmp_path, name, model, plan):
    path = tmp_path / f"{name}.safetensors"
    return path, save_packed(path, model, tiny_processor_obj(), plan)


def test_xz_streams_hold_the_same_codes_in_fewer_bytes(tmp_path):
    model = tiny_model()
    plain, s_plain = _save(tmp_path, "plain", model, _plan("none"))
    xz, s_xz = _save(tmp_path, "xz", model, _plan("xz"))
    assert s_xz["file_bytes"] == xz.stat().st_size < plain.stat().st_size
    # The dry run gives the size before compression, and says so.
    predicted = predict_packed(model, _plan("xz"), tiny_processor_obj())
    assert predicted["before_compression"] and predicted["file_bytes"] == plain.stat().st_size
    a, b = unpack_tensors(*read_packed(plain))[0], unpack_tensors(*read_packed(xz))[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tensors, meta = read_packed(xz)
    assert meta["format_version"] == "7" and read_packed(plain)[1]["format_version"] == "4"
    listed = json.loads(meta["compressed"])
    assert listed["codec"] == "xz" and "model.decoder.embed_tokens.weight::codes" in listed["tensors"]
    # A listed stream is a plain .xz stream: any xz tool gives the bit-packed codes back.
    raw = xz.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8:8 + n])["model.decoder.embed_tokens.weight::codes"]
    start, end = (8 + n + o for o in entry["data_offsets"])
    assert lzma.decompress(raw[start:end]) == read_packed(plain)[0]["model.decoder.embed_tokens.weight::codes"].numpy().tobytes()
    assert torch.equal(load_model(str(xz)).model.proj_out.weight, load_model(str(plain)).model.proj_out.weight)


def test_streams_that_would_not_shrink_are_stored_as_they_are(tmp_path):
    model = tiny_model()
    fc1 = "model.encoder.layers.0.fc1.weight"
    with torch.no_grad():  # uniform weights on an 8-bit grid without clipping: codes that xz cannot shrink
        model.state_dict()[fc1].copy_(torch.rand(model.state_dict()[fc1].shape, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    plan = plan_from_dict({"default": {"bits": 3, "group_size": 32}, "clip": "max", "codec": "xz",
                           "rules": [{"pattern": fc1, "bits": 8, "granularity": "per-channel"}]})
    path, _ = _save(tmp_path, "mixed", model, plan)
    listed = json.loads(read_packed(path)[1]["compressed"])["tensors"]
    assert f"{fc1}::codes" not in listed and "model.encoder.layers.0.fc2.weight::codes" in listed
    assert torch.equal(load_model(str(path)).model.state_dict()[fc1],
                       unpack_tensors(*read_packed(_save(tmp_path, "plain", model, plan_from_dict(
                           {**plan.as_dict(), "codec": "none"}))[0]))[0][fc1])


def _with_checksum(raw: bytes) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    return _rewrite_meta(raw, checksum="sha256:" + hashlib.sha256(raw[8 + n:]).hexdigest())


@pytest.mark.parametrize("damage, match", [
    (lambda raw, m: _rewrite_meta(raw, format_version="4"), "format version 4 has no compressed codes"),
    (lambda raw, m: _rewrite_meta(raw, compressed=json.dumps({"codec": "zip", "tensors": []})), "damaged header \\(compressed"),
    (lambda raw, m: _rewrite_meta(raw, compressed=json.dumps({"codec": "xz", "tensors": ["nope::codes"]})), "does not hold"),
])
def test_headers_that_misstate_compression_are_refused(tmp_path, damage, match):
    path, _ = _save(tmp_path, "xz", tiny_model(), _plan())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(damage(path.read_bytes(), read_packed(path)[1]))
    with pytest.raises(CheckpointError, match=match):
        load_model(str(bad))


def test_a_version_7_header_without_compressed_streams_and_a_broken_stream_are_refused(tmp_path):
    plain, _ = _save(tmp_path, "plain", tiny_model(), _plan("none"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_rewrite_meta(plain.read_bytes(), format_version="7"))
    with pytest.raises(CheckpointError, match="format version 7 needs compressed codes"):
        load_model(str(bad))
    # A stream altered after writing, checksum recomputed to match: xz itself refuses it.
    xz, _ = _save(tmp_path, "xz", tiny_model(), _plan())
    raw = bytearray(xz.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8:8 + n])["model.decoder.embed_tokens.weight::codes"]
    raw[8 + n + entry["data_offsets"][0] + 20] ^= 0xFF
    bad.write_bytes(_with_checksum(bytes(raw)))
    with pytest.raises(CheckpointError, match="embed_tokens.weight::codes"):
        load_model(str(bad))


def test_the_plan_names_the_codec():
    assert _plan().as_dict()["codec"] == "xz" and "codec" not in _plan("none").as_dict()
    with pytest.raises(UserError, match="plan.codec: expected one of none, xz"):
        _plan("zip")


@pytest.mark.integration
def test_real_whisper_base_with_xz_codes_is_smaller_and_decodes_the_same(fixture_manifest, tmp_path):
    """Real whisper-base at 4 bits (groups of 128, full range), re-stored with `--codec xz` (format version 7): the same
    weights bit for bit, the same transcripts of the real clips, in a file smaller by what the codes' skew allows
    (4-bit codes of Gaussian-like weights carry ~3.5 bits of information: at least 5 % of the file)."""
    from whisper_kdq.data.manifest import load_dataset
    from whisper_kdq.evaluate import evaluate_model
    from whisper_kdq.quant.reader import read_packed, unpack_tensors

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    args = ["--bits", "4", "--full-range", "--conv-bits", "4", "--scale-bits", "8"]
    assert CliRunner().invoke(app, ["quantize", "--model", "base", *args, "--out", str(a)]).exit_code == 0
    kept = CliRunner().invoke(app, ["quantize", "--model", str(a), *args, "--method", "keep", "--codec", "xz", "--out", str(b), "--json"])
    assert kept.exit_code == 0, kept.output
    summary = json.loads(kept.stdout)
    assert summary["file_bytes"] == b.stat().st_size < 0.95 * a.stat().st_size, (summary["file_bytes"], a.stat().st_size)
    assert summary["compressed_streams"] > 0
    wa, wb = unpack_tensors(*read_packed(a))[0], unpack_tensors(*read_packed(b))[0]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    loaded = load_model(str(b))
    assert loaded.info["format_version"] == 7
    dataset = load_dataset(fixture_manifest)
    hyps = [[p["hypothesis"] for p in evaluate_model(m, dataset)["predictions"]] for m in (load_model(str(a)), loaded)]
    assert hyps[0] == hyps[1] and all(hyps[1]), hyps
