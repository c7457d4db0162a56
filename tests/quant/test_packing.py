"""Bit packing: exact round trips for every width, the documented byte layout, size errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_kdq.quant.packing import pack, packed_nbytes, unpack


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), data=st.data())
def test_pack_unpack_round_trip(bits, data):
    values = data.draw(st.lists(st.integers(0, 2 ** bits - 1), min_size=0, max_size=300))
    codes = torch.tensor(values, dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(len(values), bits)
    assert torch.equal(unpack(packed, bits, len(values)), codes)


def test_layout_is_little_endian_low_nibble_first():
    assert pack(torch.tensor([1, 2], dtype=torch.uint8), 4).tolist() == [0x21]
    assert pack(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [0b00111001]
    # 3-bit codes straddle bytes: c0 bits 0-2, c1 bits 3-5, c2 bits 6-8.
    assert pack(torch.tensor([7, 0, 5], dtype=torch.uint8), 3).tolist() == [0b01000111, 0b1]


def test_code_too_wide_and_wrong_length():
    with pytest.raises(ValueError, match="does not fit"):
        pack(torch.tensor([16], dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack(torch.zeros(3, dtype=torch.uint8), 4, 7)
