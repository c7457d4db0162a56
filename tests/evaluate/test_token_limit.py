"""The runaway guard of decoding: a bounded number of new tokens per second of audio."""

import numpy as np

from whisper_kdq.evaluate.decode import MAX_NEW_TOKENS, TOKENS_PER_SECOND, token_limit


def test_limit_follows_the_longest_clip_and_is_capped():
    one_second, three = np.zeros(16000, np.float32), np.zeros(48000, np.float32)
    assert token_limit([one_second, three]) == 16 + 3 * TOKENS_PER_SECOND
    assert token_limit([np.zeros(16000 * 30, np.float32)]) == MAX_NEW_TOKENS
