"""Chat rendering: token layout, loss mask, system merge, truncation, completion prompts, bad input."""

from __future__ import annotations

import pytest

from nanochat.data import resources
from nanochat.data.chat_format import ConversationError
from nanochat.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = resources.read_text("chat/chatterbot_english.jsonl")[:80_000]
    return Tokenizer.train(text.splitlines(), vocab_size=400)


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12*7?"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me compute. "},
            {"type": "python", "text": "12*7"},
            {"type": "python_output", "text": "84"},
            {"type": "text", "text": "It is 84."},
        ],
    },
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]


def expected_layout(tok):
    """The layout written out by hand, segment by segment: (ids, trained?)."""
    s, e = tok.special_id, tok.encode
    return [
        ([s("<|bos|>")], 0),
        ([s("<|user_start|>")], 0), (e("Be brief.\n\nWhat is 12*7?"), 0), ([s("<|user_end|>")], 0),
        ([s("<|assistant_start|>")], 0),
        (e("Let me compute. "), 1),
        ([s("<|python_start|>")], 1), (e("12*7"), 1), ([s("<|python_end|>")], 1),
        ([s("<|output_start|>")], 0), (e("84"), 0), ([s("<|output_end|>")], 0),
        (e("It is 84."), 1),
        ([s("<|assistant_end|>")], 1),
        ([s("<|user_start|>")], 0), (e("Thanks!"), 0), ([s("<|user_end|>")], 0),
        ([s("<|assistant_start|>")], 0), (e("You're welcome."), 1), ([s("<|assistant_end|>")], 1),
    ]


def test_multi_turn_with_tool_call_layout_and_mask(tok):
    ids, mask = tok.render_conversation(CONVERSATION)
    want_ids = [i for seg, _ in expected_layout(tok) for i in seg]
    want_mask = [m for seg, m in expected_layout(tok) for _ in seg]
    assert ids == want_ids
    assert mask == want_mask
    # What is trained on, decoded: exactly the assistant's own writing and its end markers.
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "Let me compute. <|python_start|>12*7<|python_end|>It is 84.<|assistant_end|>You're welcome.<|assistant_end|>"


def test_dict_form_and_truncation(tok):
    full_ids, full_mask = tok.render_conversation({"messages": CONVERSATION, "source": "hand"})
    ids, mask = tok.render_conversation(CONVERSATION, max_tokens=7)
    assert ids == full_ids[:7] and mask == full_mask[:7] and len(ids) == 7


def test_render_for_completion(tok):
    prompt = tok.render_for_completion(CONVERSATION)
    ids, _ = tok.render_conversation(CONVERSATION)
    assert prompt[-1] == tok.special_id("<|assistant_start|>")
    # The prompt is the conversation up to and including the last <|assistant_start|>.
    assert prompt == ids[: len(prompt)]
    assert tok.decode(ids[len(prompt) :]) == "You're welcome.<|assistant_end|>"
    # Ending on a user turn (a chat in progress) gives the same kind of prompt.
    assert tok.render_for_completion(CONVERSATION[:-1]) == prompt
    single = tok.render_for_completion([{"role": "user", "content": "Hi"}])
    assert single == [tok.bos_id, tok.special_id("<|user_start|>"), *tok.encode("Hi"), tok.special_id("<|user_end|>"), tok.special_id("<|assistant_start|>")]


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "assistant", "content": "hi"}], "'user' was expected"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
        ([{"role": "user", "content": ""}], "empty content"),
        ([{"role": "user", "content": []}], "non-empty"),
        ([{"role": "robot", "content": "beep"}], "unknown role"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "system message may only come first"),
        ([{"role": "system", "content": "s"}], "only a system message"),
        ([{"role": "user", "content": [{"type": "python", "text": "1"}]}], "belong to the assistant"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}], "unknown type"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "python", "text": ""}]}], "empty text"),
        ([{"role": "user"}], "no content"),
        ([], "no messages"),
        ("hello", "list of messages"),
    ],
)
def test_malformed_conversations_are_clear_errors(tok, messages, match):
    with pytest.raises(ConversationError, match=match):
        tok.render_conversation(messages)


def test_empty_tool_output_is_allowed(tok):
    conv = [
        {"role": "user", "content": "run it"},
        {"role": "assistant", "content": [{"type": "python", "text": "x=1"}, {"type": "python_output", "text": ""}, {"type": "text", "text": "done"}]},
    ]
    ids, mask = tok.render_conversation(conv)
    out_start = ids.index(tok.special_id("<|output_start|>"))
    assert ids[out_start + 1] == tok.special_id("<|output_end|>") and mask[out_start : out_start + 2] == [0, 0]


# ---- inference prompts are the training rendering's prefix ----

LONGER = CONVERSATION + [
    {"role": "user", "content": "And 3+4?"},
    {"role": "assistant", "content": [{"type": "python", "text": "3+4"}, {"type": "python_output", "text": "7"}, {"type": "text", "text": "7."}]},
]


@pytest.mark.parametrize("conversation", [CONVERSATION, LONGER, CONVERSATION[1:]], ids=["system+tool", "longer", "no-system"])
def test_inference_prompt_is_the_training_rendering_up_to_each_assistant_start(tok, conversation):
    from nanochat.engine.prompt import render_chat_prompt

    ids, mask = tok.render_conversation(conversation, max_tokens=10_000)
    starts = [p for p, t in enumerate(ids) if t == tok.special_id("<|assistant_start|>")]
    users = [k for k, m in enumerate(conversation) if m["role"] == "user"]
    assert len(starts) == len(users)
    for start, k in zip(starts, users):
        history = conversation[: k + 1]  # up to and including a user message: the model answers next
        prompt = render_chat_prompt(tok, history, 10_000)
        assert prompt == ids[: start + 1] == tok.render_for_completion(history)
        assert mask[start] == 0 and mask[start + 1] == 1  # training learns exactly what comes after the prompt
    # a conversation that ends in an assistant message continues it: everything but its <|assistant_end|>
    assert render_chat_prompt(tok, conversation, 10_000) == ids[:-1] and ids[-1] == tok.special_id("<|assistant_end|>")


def test_lenient_inference_input_renders_as_its_strict_training_equivalent(tok):
    from nanochat.engine.prompt import render_chat_prompt

    loose = [
        {"role": "user", "content": "Hi"},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is 12*7? Tha"}, {"type": "text", "text": "nks"}]},
    ]
    strict = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\n\nWhat is 12*7? Thanks"}]
    ids, _ = tok.render_conversation(strict)
    assert tok.encode("Thanks") != tok.encode("Tha") + tok.encode("nks")  # text parts are one text, not pieces
    assert render_chat_prompt(tok, loose, 10_000) == ids + [tok.special_id("<|assistant_start|>")]


def test_developer_is_a_system_message_in_training_too(tok):
    as_developer = [{"role": "developer", "content": "Be brief."}, *CONVERSATION[1:]]
    assert tok.render_conversation(as_developer) == tok.render_conversation(CONVERSATION)
    with pytest.raises(ConversationError, match="developer message may only come first"):
        tok.render_conversation([CONVERSATION[1], {"role": "developer", "content": "late"}])


def test_roles_are_defined_once():
    from nanochat.data import chat_format
    from nanochat.engine import prompt
    from nanochat.serve import validation

    assert prompt.ROLES is chat_format.ROLES and validation.ROLES is chat_format.ROLES
    assert set(chat_format.ROLES) == {"system", "developer", "user", "assistant"}
