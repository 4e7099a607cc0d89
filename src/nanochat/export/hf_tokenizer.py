"""Our tokenizer as Hugging Face files: `tokenizer.json` (a `tokenizers` BPE), `tokenizer_config.json`
with the chat template, and `special_tokens_map.json`. Written as plain JSON: exporting needs neither
`tokenizers` nor `transformers`.

How the tiktoken tokenizer maps onto a `tokenizers` one, so that both give the same ids:
- pre-tokenizer: our split regex (Split, Isolated), then ByteLevel without its own regex, which turns
  each byte into one printable character (the GPT-2 byte table, `byte_to_unicode`);
- model: BPE whose vocab is every token's bytes in that alphabet, with `ignore_merges` (a piece that
  is a whole token is that token, as in tiktoken) and a merge for EVERY split of a token into two
  tokens, ranked by the merged token's rank. tiktoken merges the adjacent pair whose concatenation has
  the lowest rank; listing every split (not only the one BPE training used) gives BPE the same choice;
- special tokens: added tokens, matched in text before pre-tokenization (so the chat template's
  `<|user_start|>` text becomes the special id), and a post-processor that puts `<|bos|>` in front of
  `tokenizer(text)` (our documents start with it; `apply_chat_template` adds no extra one).

The chat template renders exactly `nanochat.engine.prompt.render_chat_prompt`'s layout: system and
developer messages merged into the first user message (`system + "\\n\\n" + user`), consecutive
messages of one role joined with a blank line, content strings or lists of text / python /
python_output parts, and `add_generation_prompt` appending `<|assistant_start|>`. A final assistant
message is closed with `<|assistant_end|>` (the training layout); `continue_final_message=True`
leaves it open, as our server does.
"""

from __future__ import annotations

from typing import Any

CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- set kind = part.get('type', 'text') -%}"
    "{%- if kind == 'text' -%}{{- part['text'] -}}"
    "{%- elif kind == 'python' -%}{{- '<|python_start|>' ~ part['text'] ~ '<|python_end|>' -}}"
    "{%- elif kind == 'python_output' -%}{{- '<|output_start|>' ~ part['text'] ~ '<|output_end|>' -}}"
    "{%- else -%}{{- raise_exception('content part type ' ~ kind ~ ' is not supported; use text, python or python_output') -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set sys = namespace(text='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] not in ['system', 'developer', 'user', 'assistant'] -%}"
    "{{- raise_exception('message role ' ~ m['role'] ~ ' is not supported; use system, user or assistant') -}}"
    "{%- endif -%}"
    "{%- if m['role'] in ['system', 'developer'] -%}"
    "{%- set t = render(m['content']) -%}"
    "{%- if t -%}{%- set sys.text = (sys.text ~ '\\n\\n' ~ t) if sys.text else t -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- bos_token -}}"
    "{%- set st = namespace(prev='', first=true) -%}"
    "{%- for m in messages if m['role'] in ['user', 'assistant'] -%}"
    "{%- if m['role'] == st.prev -%}{{- '\\n\\n' -}}"
    "{%- else -%}"
    "{%- if st.prev == 'user' -%}{{- '<|user_end|>' -}}{%- elif st.prev == 'assistant' -%}{{- '<|assistant_end|>' -}}{%- endif -%}"
    "{%- if m['role'] == 'user' -%}{{- '<|user_start|>' -}}"
    "{%- if st.first and sys.text -%}{{- sys.text ~ '\\n\\n' -}}{%- endif -%}"
    "{%- else -%}{{- '<|assistant_start|>' -}}{%- endif -%}"
    "{%- endif -%}"
    "{{- render(m['content']) -}}"
    "{%- set st.prev = m['role'] -%}{%- set st.first = false -%}"
    "{%- endfor -%}"
    "{%- if st.prev == '' -%}{{- raise_exception('the conversation has no user message') -}}{%- endif -%}"
    "{%- if st.prev == 'user' -%}{{- '<|user_end|>' -}}{%- else -%}{{- '<|assistant_end|>' -}}{%- endif -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}"
)


def byte_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
    (controls, space, ...) get the code points from U+0100 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merges(ranks: dict[bytes, int], spell) -> list[list[str]]:
    """Every (left, right) split of every multi-byte token into two tokens, by the merged token's rank."""
    out: list[tuple[int, int, list[str]]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                out.append((rank, cut, [spell(left), spell(right)]))
    out.sort(key=lambda x: (x[0], x[1]))
    return [m for _, _, m in out]


def tokenizer_json(tok) -> dict[str, Any]:
    """The `tokenizers` JSON document of our tokenizer (see the module docstring)."""
    table = byte_to_unicode()

    def spell(b: bytes) -> str:
        return "".join(table[x] for x in b)

    ranks = tok.mergeable_ranks
    vocab = {spell(token): rank for token, rank in ranks.items()}
    added = [
        {"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for name, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    ]
    bos = "<|bos|>"
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [tok.bos_id], "tokens": [bos]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": _merges(ranks, spell),
        },
    }


def tokenizer_config(tok, max_length: int, eos_token: str) -> dict[str, Any]:
    """`tokenizer_config.json`: the fast tokenizer class, special tokens and the chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": eos_token,
        "pad_token": "<|bos|>",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "chat_template": CHAT_TEMPLATE,
        "additional_special_tokens": [n for n in tok.special_tokens if n not in ("<|bos|>", eos_token)],
    }


def special_tokens_map(tok, eos_token: str) -> dict[str, Any]:
    return {
        "bos_token": "<|bos|>",
        "eos_token": eos_token,
        "pad_token": "<|bos|>",
        "additional_special_tokens": [n for n in tok.special_tokens if n not in ("<|bos|>", eos_token)],
    }
