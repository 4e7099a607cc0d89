"""Turning a stream of token ids into a stream of text that never splits a character.

A byte-level BPE token can end in the middle of a multi-byte UTF-8 character (an emoji, a CJK
character). `StreamDecoder.push(id)` returns only the text that is complete so far and keeps the
dangling bytes for the next token; `flush()` returns what is left at the end (invalid bytes become
U+FFFD there, never earlier). Special tokens are shown through `SPECIAL_DISPLAY`: a calculator call
`<|python_start|>2+2<|python_end|><|output_start|>4<|output_end|>` reads as `<<2+2 = 4>>`, the way
GSM8K writes its calculator annotations; the end-of-turn tokens show as nothing.
"""

from __future__ import annotations

import codecs

SPECIAL_DISPLAY = {
    "<|bos|>": "",
    "<|user_start|>": "",
    "<|user_end|>": "",
    "<|assistant_start|>": "",
    "<|assistant_end|>": "",
    "<|python_start|>": "<<",
    "<|python_end|>": "",
    "<|output_start|>": " = ",
    "<|output_end|>": ">>",
}


class StreamDecoder:
    """Incremental detokenizer for one sequence: push ids, get back whole characters."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._special = {}
        for name, shown in SPECIAL_DISPLAY.items():
            try:
                self._special[tokenizer.special_id(name)] = shown
            except Exception:  # a tokenizer without this special token simply never produces it
                continue
        self.text = ""  # everything returned so far

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text ("" while a character is still partial)."""
        token_id = int(token_id)
        if token_id in self._special:
            # a special token ends any partial character: flush it first (as U+FFFD if invalid)
            out = self._decoder.decode(b"", final=True) + self._special[token_id]
            self._decoder.reset()
        else:
            out = self._decoder.decode(self.tokenizer.decode_bytes([token_id]))
        self.text += out
        return out

    def flush(self) -> str:
        """The text still held back (a truncated character becomes U+FFFD)."""
        out = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self.text += out
        return out
