"""Corpora: the demo split, parquet shards, rank sharding by row group, exact resume, imports."""

from __future__ import annotations

import gzip
import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.common import paths
from nanochat.common.errors import NanochatError
from nanochat.data import resources
from nanochat.data.corpus import open_corpus, split_passages
from nanochat.data.importer import import_dataset


def write_shard(path, docs, rows_per_group):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs}), path, row_group_size=rows_per_group)


@pytest.fixture
def web(nanochat_home):
    """Two training shards (row groups of 3) and the ClimbMix validation shard, as `download` leaves them."""
    d = paths.data_dir("climbmix")
    write_shard(d / "shard_00000.parquet", [f"a{i}" for i in range(7)], 3)  # row groups: 3, 3, 1
    write_shard(d / "shard_00001.parquet", [f"b{i}" for i in range(5)], 3)  # row groups: 3, 2
    write_shard(d / "shard_06542.parquet", [f"v{i}" for i in range(4)], 2)
    return d


def test_demo_splits_are_the_novels_with_persuasion_held_out():
    train, val = open_corpus("demo", "train"), open_corpus("demo", "val")
    assert [s.name for s in val.shards] == ["persuasion"]
    assert "persuasion" not in [s.name for s in train.shards] and train.num_shards == 5
    # The passages hold every word of the novel, in order, and nothing else.
    novel = resources.read_text("corpus/austen/persuasion.txt")
    passages = [t for t, _ in val.iter_docs(loop=False)]
    assert " ".join(passages).split() == novel.split()
    assert all(len(p) <= 1500 or "\n\n" not in p for p in passages)
    assert len(val.row_groups()) >= 8  # enough for 8 ranks


def test_split_passages_by_hand():
    text = "TITLE\n\nCHAPTER 1\n\nOne two\nthree.\n\nFour.\n\nCHAPTER 2\n\n" + "x" * 30 + "\n\n" + "y" * 30
    assert split_passages(text, max_chars=40) == ["TITLE\n\nCHAPTER 1\n\nOne two three.\n\nFour.", "CHAPTER 2", "x" * 30, "y" * 30]


def test_web_split_and_rank_sharding(web):
    train = open_corpus("web", "train")
    assert [s.name for s in train.shards] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert [t for t, _ in open_corpus("web", "val").iter_docs(loop=False)] == ["v0", "v1", "v2", "v3"]
    # Row groups in order: (0,0)=a0-a2 (0,1)=a3-a5 (0,2)=a6 (1,0)=b0-b2 (1,1)=b3-b4; rank r of 2 takes every other one.
    rank0 = [t for t, _ in train.iter_docs(0, 2, loop=False)]
    rank1 = [t for t, _ in train.iter_docs(1, 2, loop=False)]
    assert rank0 == ["a0", "a1", "a2", "a6", "b3", "b4"]
    assert rank1 == ["a3", "a4", "a5", "b0", "b1", "b2"]
    with pytest.raises(NanochatError, match="too few"):
        next(open_corpus("web", "val").iter_docs(2, 3))


def test_positions_resume_exactly_across_epochs(web):
    train = open_corpus("web", "train")
    for rank, world in [(0, 1), (1, 2)]:
        run = list(itertools.islice(train.iter_docs(rank, world), 20))  # more than two epochs
        assert run[0][1]["epoch"] == 1 and run[-1][1]["epoch"] >= 2
        for k in range(len(run) - 1):
            start = json.loads(json.dumps(run[k][1]))  # positions survive a JSON checkpoint
            resumed = list(itertools.islice(train.iter_docs(rank, world, start=start), len(run) - k - 1))
            assert resumed == run[k + 1 :], (rank, world, k)


def test_missing_web_data_and_bad_positions_are_clear_errors(nanochat_home, web):
    with pytest.raises(NanochatError, match="nanochat data download --dataset fineweb-edu"):
        open_corpus("fineweb-edu", "train")
    (web / "shard_06542.parquet").unlink()
    with pytest.raises(NanochatError, match="validation shard shard_06542.parquet is missing"):
        open_corpus("web", "val")
    train = open_corpus("web", "train")
    with pytest.raises(NanochatError, match="outside this data set"):
        next(train.iter_docs(start={"epoch": 1, "shard": 9, "row_group": 0, "row": 0}))
    with pytest.raises(NanochatError, match="bad data position"):
        next(train.iter_docs(start={"shard": 0}))
    with pytest.raises(NanochatError, match="unknown data set"):
        open_corpus("nope", "train")
    with pytest.raises(NanochatError, match="unknown split"):
        open_corpus("demo", "test")


def test_import_formats_into_a_corpus(tmp_path, nanochat_home):
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "a.txt").write_text("Alpha document.\r\nSecond line.\n")
    (src / "b.md").write_text("# Beta\n\nmarkdown body\n")
    (src / "nested" / "c.jsonl").write_text(json.dumps({"text": "gamma"}) + "\n\n" + json.dumps({"text": "delta"}) + "\n")
    with gzip.open(src / "nested" / "d.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "epsilon"}) + "\n")
    with pa.CompressedOutputStream(str(src / "e.txt.zst"), "zstd") as f:
        f.write("zeta from zstd".encode())
    write_shard(src / "f.parquet", ["eta", "theta", ""], 2)
    (src / ".hidden.txt").write_text("never")
    (src / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "long.txt").write_text("\n\n".join(f"paragraph {i} " + "w" * 20 for i in range(10)))

    r = import_dataset([str(src), str(tmp_path / "long.txt")], "mine", val_fraction=0.25, max_doc_chars=100)
    assert r.files == 7 and r.skipped_files == 2
    want = {"Alpha document.\nSecond line.", "# Beta\n\nmarkdown body", "gamma", "delta", "epsilon", "zeta from zstd", "eta", "theta"}
    # long.txt: 10 paragraphs of 33 chars, cut at blank lines into pieces of at most 100 characters.
    paras = [f"paragraph {i} " + "w" * 20 for i in range(10)]
    want |= {"\n\n".join(paras[i : i + 3]) for i in (0, 3, 6)} | {paras[9]}
    train = [t for t, _ in open_corpus("mine", "train").iter_docs(loop=False)]
    val = [t for t, _ in open_corpus("mine", "val").iter_docs(loop=False)]
    assert set(train) | set(val) == want and not set(train) & set(val)
    assert len(val) == 3  # every 4th of 12 shuffled documents
    meta = json.loads((paths.data_dir("mine") / "dataset.json").read_text())
    assert meta["docs"] == {"train": 9, "val": 3} and meta["val_file"] == "shard_val.parquet"
    assert not list(paths.data_dir().glob(".tmp-*"))
    with pytest.raises(NanochatError, match="already exists"):
        import_dataset([str(src)], "mine")


def test_import_errors(tmp_path, nanochat_home):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(NanochatError, match=r"bad.jsonl:2: .*--text-field"):
        import_dataset([str(bad)], "x")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(NanochatError, match="not UTF-8"):
        import_dataset([str(tmp_path / "latin1.txt"), str(tmp_path / "latin1.txt")], "y")
    with pytest.raises(NanochatError, match="built-in"):
        import_dataset([str(bad)], "demo")
    with pytest.raises(NanochatError, match="no such file"):
        import_dataset([str(tmp_path / "missing")], "z")
    one = tmp_path / "one.txt"
    one.write_text("only one")
    with pytest.raises(NanochatError, match="at least 2"):
        import_dataset([str(one)], "w")
    assert not paths.data_dir().exists() or not any(paths.data_dir().iterdir())


def test_threads_reading_one_corpus_never_close_each_others_files(tmp_path):
    """The micro-step loaders of one run share the corpus object; each thread closes the shard it leaves, which
    must not close the file under another thread still reading it (it did: "Invalid operation on closed file")."""
    import threading

    folder = tmp_path / "many"
    folder.mkdir()
    for s in range(9):  # 8 train shards of 12 row groups of 3 rows, and the validation shard
        texts = [f"shard {s} doc {i} " + "x" * 50 for i in range(36)]
        pq.write_table(pa.table({"text": texts}), folder / f"shard_{s:05d}.parquet", row_group_size=3)
    corpus = open_corpus(str(folder), "train")
    seen: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def read(rank: int) -> None:
        try:
            seen[rank] = [text for text, _ in itertools.islice(corpus.iter_docs(rank, 4), 3 * 72)]
        except BaseException as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=read, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # three epochs of each rank's quarter of the 96 row groups, in order, and the quarters are disjoint
    firsts = [set(seen[r][: 3 * 24]) for r in range(4)]
    assert all(len(f) == 72 for f in firsts) and len(set().union(*firsts)) == 288
    assert all(seen[r][:72] == seen[r][72:144] == seen[r][144:] for r in range(4))
