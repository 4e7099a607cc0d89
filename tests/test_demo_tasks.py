"""The synthetic conversations of the demo's fine-tuning: true statements about the Austen novels, small
talk; all reproducible and renderable (the calculator sums are tested in test_arith.py)."""

from __future__ import annotations


def test_austen_answers_are_about_the_right_book():
    from nanochat.tasks.austen import CHARACTERS, NOVELS, AustenQuestions

    assert len(NOVELS) == 6 and all(title in NOVELS for _, title, _ in CHARACTERS)
    years = {"Pride and Prejudice": "1813", "Sense and Sensibility": "1811", "Emma": "1815", "Mansfield Park": "1814", "Northanger Abbey": "1817", "Persuasion": "1817"}
    by_name = {name: title for name, title, _ in CHARACTERS}
    for conv in AustenQuestions(size=600):
        msgs = conv["messages"]
        for q, a in zip(msgs[::2], msgs[1::2]):
            q, a = q["content"], a["content"]
            names = [n for n in by_name if n in q]
            if names:  # a question about a character names its novel in the answer
                assert by_name[max(names, key=len)] in a, (q, a)
            for title, year in years.items():
                if title in q and ("published" in q or "year" in q):
                    assert year in a, (q, a)
            if "wrote" in q or "author" in q:
                assert "Jane Austen" in a


def test_small_talk_and_identity_render_for_training():
    from nanochat.data.resources import open_resource
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.tasks.arithmetic import SimpleArithmetic
    from nanochat.tasks.austen import AustenQuestions
    from nanochat.tasks.identity import IdentityConversations, SmallTalk

    text = open_resource("corpus/austen/emma.txt").read()[:30_000]
    tok = Tokenizer.train([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=300)
    for task in (SmallTalk(50), IdentityConversations(50), AustenQuestions(50), SimpleArithmetic(50)):
        for conv in task:
            ids, mask = tok.render_conversation(conv["messages"], max_tokens=4096)
            assert sum(mask) > 0 and len(ids) < 400, task.name
    talk = [c["messages"] for c in SmallTalk(200)]
    assert all(m["role"] == ("user" if i % 2 == 0 else "assistant") for c in talk for i, m in enumerate(c))
    assert any(len(c) == 4 for c in talk) and all(len(c) in (2, 4) for c in talk)
