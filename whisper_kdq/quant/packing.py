"""Bit packing of integer codes: a dense little-endian bit stream, `bits` bits per code.

Code i occupies stream bits [i*bits, (i+1)*bits), least significant bit first, and stream bit k
is bit (k % 8) of byte k // 8. For 4-bit codes that is two per byte, low nibble first:

    byte 0 = c1 c1 c1 c1 c0 c0 c0 c0      (bit 7 ... bit 0)

3-bit codes straddle bytes (c0 = bits 0-2 of byte 0, c1 = bits 3-5, c2 = bits 6-7 of byte 0 and bit 0
of byte 1, ...). The stream ends with zero bits up to the next byte: ceil(n * bits / 8) bytes.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["packed_nbytes", "pack", "unpack"]


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flat uint8 codes (each < 2**bits) -> uint8 bytes of the bit stream."""
    c = codes.reshape(-1).to(torch.uint8).numpy()
    if bits == 8:
        return torch.from_numpy(c.copy())
    if c.size and int(c.max()) >= 1 << bits:
        raise ValueError(f"code {int(c.max())} does not fit in {bits} bits")
    if bits == 4:  # the common case, without the 8x bit expansion
        padded = np.concatenate([c, np.zeros(c.size % 2, np.uint8)])
        return torch.from_numpy((padded[0::2] | (padded[1::2] << 4)).astype(np.uint8))
    stream = np.unpackbits(c[:, None], axis=1, bitorder="little")[:, :bits].reshape(-1)
    return torch.from_numpy(np.packbits(stream, bitorder="little"))


def unpack(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack`: the first `n` codes as flat uint8."""
    b = data.reshape(-1).to(torch.uint8).numpy()
    if b.size != packed_nbytes(n, bits):
        raise ValueError(f"{b.size} bytes cannot hold exactly {n} codes of {bits} bits")
    if bits == 8:
        return torch.from_numpy(b.copy())
    if bits == 4:
        out = np.empty(b.size * 2, np.uint8)
        out[0::2], out[1::2] = b & 0x0F, b >> 4
        return torch.from_numpy(out[:n].copy())
    stream = np.unpackbits(b, bitorder="little")[: n * bits].reshape(n, bits)
    return torch.from_numpy(np.packbits(stream, axis=1, bitorder="little").reshape(-1))
