"""Between characters of a response's text and its tokens: which token holds a given character.

The text is the response's token ids decoded (special tokens skipped), so that character offsets and tokens agree
whatever the tokenizer does with spaces at the start of a text; a prefix of the ids decodes to a prefix of that text
for the byte-level and SentencePiece tokenizers of the models we train.
"""

from __future__ import annotations

from collections.abc import Sequence


def response_text(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def token_at_char(tokenizer, ids: Sequence[int], char: int) -> int | None:
    """The index of the first token whose decoded prefix reaches past `char` (the token holding that character),
    by bisection over prefix lengths; None when the text is not that long."""
    ids = list(ids)

    def decoded_length(k: int) -> int:
        return len(tokenizer.decode(ids[:k], skip_special_tokens=True))

    if char < 0 or decoded_length(len(ids)) <= char:
        return None
    lo, hi = 1, len(ids)  # the smallest k with decoded_length(k) > char is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if decoded_length(mid) > char:
            hi = mid
        else:
            lo = mid + 1
    return lo - 1
