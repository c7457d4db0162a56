"""What the writer (`checkpoint.py`) and the reader (`reader.py`) of a packed checkpoint agree on: the
safetensors dtypes we use and the name of the tokenizer blob. docs/FORMAT.md specifies the container."""

from __future__ import annotations

import numpy as np
import torch

TOKENIZER_KEY = "__tokenizer__"
# safetensors dtype -> (torch dtype, numpy dtype, bytes per item)
DTYPES = {"F32": (torch.float32, np.float32, 4), "I32": (torch.int32, np.int32, 4),
          "F16": (torch.float16, np.float16, 2), "U8": (torch.uint8, np.uint8, 1)}
ORDER = {"F32": 0, "I32": 0, "F16": 1, "U8": 2}  # widest first, so every tensor starts aligned to its item size
