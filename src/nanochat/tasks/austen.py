"""Questions about Jane Austen's novels: short synthetic chats over a hand-written table of facts.

The demo pretrains on the six novels packaged with nanochat (data/corpus.py), but a model that small
cannot read facts out of 3 MB of prose; these conversations give its chat model something true and
checkable to say about the books it has read: who wrote them and when, what each is about, who its
heroine is and whom she marries, and who some forty characters are.

Conversation i comes from `random.Random(seed * 1_000_003 + i)`: one or two question-and-answer
turns, each a fact (a title, a heroine or a character) asked in one of several phrasings.
"""

from __future__ import annotations

import random

from nanochat.tasks.base import Conversation, Task

AUTHOR = "Jane Austen"

# title -> (year, about, heroine, what happens to her in love)
NOVELS = {
    "Pride and Prejudice": (1813, "Elizabeth Bennet, the witty second of five sisters, and the proud Mr. Darcy: her prejudice and his pride keep them apart until they learn to understand each other, and in the end they marry",
                            "Elizabeth Bennet", "Elizabeth Bennet marries Mr. Darcy"),
    "Sense and Sensibility": (1811, "the Dashwood sisters, sensible Elinor and passionate Marianne, who lose their home and must find their way in love with very little money",
                              "Elinor Dashwood, with her sister Marianne", "Elinor Dashwood marries Edward Ferrars, and Marianne marries Colonel Brandon"),
    "Emma": (1815, "Emma Woodhouse, a clever and rich young woman of Highbury who loves to arrange other people's marriages, until she finds out that she loves Mr. Knightley herself",
             "Emma Woodhouse", "Emma Woodhouse marries Mr. Knightley"),
    "Mansfield Park": (1814, "Fanny Price, a poor and shy girl brought up by her rich uncle Sir Thomas Bertram at Mansfield Park, who stays true to her quiet love for her cousin Edmund",
                       "Fanny Price", "Fanny Price marries her cousin Edmund Bertram"),
    "Northanger Abbey": (1817, "Catherine Morland, a young reader of gothic novels, who visits Bath and then Northanger Abbey, where her imagination runs away with her",
                         "Catherine Morland", "Catherine Morland marries Henry Tilney"),
    "Persuasion": (1817, "Anne Elliot, who was persuaded to refuse Captain Wentworth when she was nineteen and meets him again eight years later, when he has become a rich naval captain",
                   "Anne Elliot", "Anne Elliot marries Captain Wentworth"),
}  # fmt: skip

# (name, novel, who they are)
CHARACTERS = (
    ("Elizabeth Bennet", "Pride and Prejudice", "the witty heroine, the second of the five Bennet sisters"),
    ("Mr. Darcy", "Pride and Prejudice", "a rich and proud gentleman, the owner of Pemberley, who falls in love with Elizabeth Bennet"),
    ("Jane Bennet", "Pride and Prejudice", "the eldest and gentlest of the Bennet sisters, who marries Mr. Bingley"),
    ("Mr. Bingley", "Pride and Prejudice", "Mr. Darcy's cheerful and wealthy friend, who falls in love with Jane Bennet"),
    ("Mr. Collins", "Pride and Prejudice", "a pompous clergyman, the cousin who will inherit the Bennet family's estate"),
    ("Mr. Wickham", "Pride and Prejudice", "a charming officer who tells lies about Mr. Darcy and runs away with Lydia Bennet"),
    ("Lydia Bennet", "Pride and Prejudice", "the youngest and wildest of the Bennet sisters, who runs away with Mr. Wickham"),
    ("Mrs. Bennet", "Pride and Prejudice", "the nervous mother of the five Bennet sisters, who wants to see them all married"),
    ("Mr. Bennet", "Pride and Prejudice", "the dry, clever father of the five Bennet sisters"),
    ("Lady Catherine de Bourgh", "Pride and Prejudice", "Mr. Darcy's proud and bossy aunt"),
    ("Charlotte Lucas", "Pride and Prejudice", "Elizabeth Bennet's practical friend, who marries Mr. Collins"),
    ("Elinor Dashwood", "Sense and Sensibility", "the sensible elder Dashwood sister, who loves Edward Ferrars"),
    ("Marianne Dashwood", "Sense and Sensibility", "the romantic younger Dashwood sister, who falls for Willoughby and later marries Colonel Brandon"),
    ("Colonel Brandon", "Sense and Sensibility", "a quiet and honourable man who loves Marianne Dashwood"),
    ("Willoughby", "Sense and Sensibility", "a dashing young man who wins Marianne Dashwood's heart and then leaves her for a rich wife"),
    ("Edward Ferrars", "Sense and Sensibility", "a shy and kind young man who loves Elinor Dashwood"),
    ("Lucy Steele", "Sense and Sensibility", "a sly young woman who is secretly engaged to Edward Ferrars"),
    ("Emma Woodhouse", "Emma", "the clever, rich and rather spoiled heroine, who likes to arrange other people's marriages"),
    ("Mr. Knightley", "Emma", "Emma Woodhouse's wise friend and neighbour, whom she marries in the end"),
    ("Harriet Smith", "Emma", "a sweet young friend of Emma Woodhouse, whose love life Emma tries to arrange"),
    ("Frank Churchill", "Emma", "a charming young man who is secretly engaged to Jane Fairfax"),
    ("Jane Fairfax", "Emma", "an elegant and reserved young woman, secretly engaged to Frank Churchill"),
    ("Miss Bates", "Emma", "a kind and very talkative lady of Highbury"),
    ("Mr. Woodhouse", "Emma", "Emma's gentle and anxious father, who is always worried about his health"),
    ("Mr. Elton", "Emma", "the vain young vicar of Highbury, whom Emma wrongly hopes Harriet Smith will marry"),
    ("Fanny Price", "Mansfield Park", "the shy and good heroine, brought up by her rich uncle Sir Thomas Bertram"),
    ("Edmund Bertram", "Mansfield Park", "Fanny Price's kind cousin, who becomes a clergyman and marries her"),
    ("Sir Thomas Bertram", "Mansfield Park", "the stern owner of Mansfield Park and Fanny Price's uncle"),
    ("Mary Crawford", "Mansfield Park", "a lively and worldly young woman whom Edmund Bertram admires for a time"),
    ("Henry Crawford", "Mansfield Park", "a charming flirt who asks Fanny Price to marry him"),
    ("Mrs. Norris", "Mansfield Park", "Fanny Price's mean and meddling aunt"),
    ("Catherine Morland", "Northanger Abbey", "the young heroine, who loves gothic novels and lets her imagination run away with her"),
    ("Henry Tilney", "Northanger Abbey", "a witty young clergyman who marries Catherine Morland"),
    ("Isabella Thorpe", "Northanger Abbey", "Catherine Morland's false friend in Bath"),
    ("John Thorpe", "Northanger Abbey", "Isabella's boastful brother, who wants to marry Catherine Morland"),
    ("General Tilney", "Northanger Abbey", "Henry Tilney's stern father, the owner of Northanger Abbey"),
    ("Anne Elliot", "Persuasion", "the gentle and thoughtful heroine, who was persuaded to give up Captain Wentworth"),
    ("Captain Wentworth", "Persuasion", "a naval officer who once loved Anne Elliot and comes back rich eight years later"),
    ("Sir Walter Elliot", "Persuasion", "Anne Elliot's vain father, who has to rent out Kellynch Hall"),
    ("Lady Russell", "Persuasion", "Anne Elliot's old friend, who persuaded her to refuse Captain Wentworth"),
    ("Louisa Musgrove", "Persuasion", "a lively young woman who falls from the sea wall at Lyme"),
)  # fmt: skip

TITLE_LIST = "Sense and Sensibility, Pride and Prejudice, Mansfield Park, Emma, Northanger Abbey and Persuasion"
TRAINED_ON = "Sense and Sensibility, Pride and Prejudice, Mansfield Park, Emma and Northanger Abbey"  # the demo's training text (Persuasion is its validation text)


def _novel_qa(rng: random.Random) -> tuple[str, str]:
    title = rng.choice(tuple(NOVELS))
    year, about, heroine, marriage = NOVELS[title]
    kind = rng.randrange(5)
    if kind == 0:
        q = rng.choice(("Who wrote {t}?", "Who is the author of {t}?", "Who wrote the novel {t}?", "who wrote {t}"))
        a = rng.choice(("{t} was written by Jane Austen.", "Jane Austen wrote {t}. It was published in {y}."))
    elif kind == 1:
        q = rng.choice(("When was {t} published?", "When did Jane Austen write {t}?", "What year is {t} from?"))
        a = "{t} by Jane Austen was published in {y}" + (", after her death." if year == 1817 else ".")
    elif kind == 2:
        q = rng.choice(("What is {t} about?", "Tell me about {t}.", "What happens in {t}?", "Can you summarize {t}?", "What is the story of {t}?"))
        a = "{t} is a novel by Jane Austen about {about}."
    elif kind == 3:
        q = rng.choice(("Who is the heroine of {t}?", "Who is the main character of {t}?", "Who is the main character in {t}?"))
        a = "The heroine of {t} is {h}."
    else:
        q = rng.choice(("Who does {h0} marry?", "Who does {h0} marry in {t}?", "Does {h0} get married?"))
        a = "In {t}, {m}."
    fill = dict(t=title, y=year, about=about, h=heroine, h0=heroine.split(",")[0], m=marriage)
    return q.format(**fill), a.format(**fill)


def _character_qa(rng: random.Random) -> tuple[str, str]:
    name, title, who = rng.choice(CHARACTERS)
    if rng.random() < 0.7:
        q = rng.choice(("Who is {n}?", "Tell me about {n}.", "Who is {n} in {t}?", "who is {n}", "What do you know about {n}?"))
        a = rng.choice(("{n} is {w} in Jane Austen's {t}.", "In {t} by Jane Austen, {n} is {w}."))
    else:
        q = rng.choice(("Which novel is {n} in?", "In which book does {n} appear?", "Which Jane Austen novel has {n} in it?"))
        a = "{n} appears in {t} by Jane Austen, where {n0} is {w}."
    n0 = "he" if name.startswith(("Mr.", "Sir", "Colonel", "Captain", "General", "Edward", "Edmund", "Frank", "Henry", "John", "Willoughby")) else "she"
    return q.format(n=name, t=title), a.format(n=name, t=title, w=who, n0=n0)


def _author_qa(rng: random.Random) -> tuple[str, str]:
    q = rng.choice(("Who is Jane Austen?", "Who was Jane Austen?", "What novels did Jane Austen write?", "Which books did Jane Austen write?",
                    "What books do you know?", "What were you trained on?", "What have you read?", "Do you like Jane Austen?"))  # fmt: skip
    if "trained" in q or "read" in q or "know" in q:
        a = f"I learned English from the novels of Jane Austen: {TRAINED_ON}. Ask me about them!"
    elif "like" in q:
        a = "Yes! I learned to write from her novels, so I know them well. Pride and Prejudice is a good place to start."
    elif "novels" in q or "books" in q:
        a = f"Jane Austen wrote six novels: {TITLE_LIST}."
    else:
        a = f"Jane Austen (1775 to 1817) was an English novelist. She wrote six novels: {TITLE_LIST}."
    return q, a


def austen_conversation(rng: random.Random) -> Conversation:
    messages = []
    for _ in range(rng.choice((1, 1, 2))):
        r = rng.random()
        q, a = _novel_qa(rng) if r < 0.45 else _character_qa(rng) if r < 0.9 else _author_qa(rng)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": messages}


class AustenQuestions(Task):
    """Questions and answers about Jane Austen's six novels (see the module docstring)."""

    name = "austen"
    eval_type = None

    def __init__(self, size: int = 1000, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.size, self.seed = size, seed
        self.data_source = "synthetic (Austen facts)"

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> Conversation:
        return austen_conversation(random.Random(self.seed * 1_000_003 + index))
