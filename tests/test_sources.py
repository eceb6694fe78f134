import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fromzero.data import sources
from fromzero.data.sources import DataError, SourceStats, iter_documents, parse_hub_spec


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def docs(source, **kwargs):
    return list(iter_documents(source, **kwargs))


def test_txt_file_is_one_document(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First line.\nSecond line, ünïcödé 🙂.\n", encoding="utf-8")
    assert docs(path) == ["First line.\nSecond line, ünïcödé 🙂."]
    assert docs(str(path)) == docs(path)


def test_txt_with_separators(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text("One.\nstill one.\n<|endoftext|>\nTwo.<|endoftext|>Three.\n<|endoftext|>\n\n<|endoftext|>\n")
    assert docs(path) == ["One.\nstill one.", "Two.", "Three."]


def test_bom_and_crlf(tmp_path):
    path = tmp_path / "win.md"
    path.write_bytes("\ufeff# Title\r\nbody line\r\n".encode("utf-8"))
    assert docs(path) == ["# Title\nbody line"]


def test_directory_recursive_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "a.txt").write_text("one")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "three"}])
    (tmp_path / "notes.rst").write_text("ignored: unsupported files in a directory are skipped")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("ignored: hidden")
    assert docs(tmp_path) == ["one", "two", "three"]


def test_glob(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text(name)
    assert docs(str(tmp_path / "*.txt")) == ["a.txt", "b.txt"]
    assert docs(str(tmp_path / "**" / "*.md")) == ["c.md"]


def test_jsonl_and_gz(tmp_path):
    records = [{"text": "hello", "id": 1}, {"text": "wörld\n🙂", "id": 2}]
    path = write_jsonl(tmp_path / "a.jsonl", records)
    with path.open("a") as f:
        f.write("\n")  # a trailing blank line is not a record
    gz = tmp_path / "b.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    assert docs(path) == docs(gz) == ["hello", "wörld\n🙂"]


def test_custom_text_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"content": "x"}, {"content": "y"}])
    assert docs(path, text_field="content") == ["x", "y"]


def test_json_array_and_object(tmp_path):
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"text": "a"}, {"text": "b"}, "bare string"]))
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"version": 1, "data": [{"text": "a"}, {"text": "b"}]}))
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"text": "only"}))
    assert docs(arr) == ["a", "b", "bare string"]
    assert docs(obj) == ["a", "b"]
    assert docs(single) == ["only"]
    ambiguous = tmp_path / "amb.json"
    ambiguous.write_text(json.dumps({"x": [], "y": []}))
    with pytest.raises(DataError, match="amb.json: expected an array"):
        docs(ambiguous)


def test_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    texts = [f"doc {i}" for i in range(3000)]
    pq.write_table(pa.table({"id": list(range(3000)), "body": texts}), path, row_group_size=1000)
    assert docs(path, text_field="body") == texts
    with pytest.raises(DataError, match=r"a.parquet: missing text column 'text' \(columns: \['id', 'body'\]\)"):
        docs(path)
    with pytest.raises(DataError, match="has type int64"):
        docs(path, text_field="id")


def test_parquet_null_row(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"]}), path)
    with pytest.raises(DataError, match="n.parquet: row 1: text field 'text' is null"):
        docs(path)
    stats = SourceStats()
    assert docs(path, on_error="skip", stats=stats) == ["a", "c"]
    assert stats.skipped == 1


def test_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"text": ["a", "b"], "n": [1, 2]}).save_to_disk(str(single))
    assert docs(single) == ["a", "b"]

    dd = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t1", "t2"]}),
            "test": datasets.Dataset.from_dict({"text": ["e1"]}),
        }
    ).save_to_disk(str(dd))
    assert docs(dd) == ["t1", "t2"]
    assert docs(f"{dd}::test") == ["e1"]
    with pytest.raises(DataError, match="no split 'nope'"):
        docs(f"{dd}::nope")
    # found as a unit inside a directory, not walked into (its own .json files aren't documents)
    (tmp_path / "z.txt").write_text("z")
    assert docs([tmp_path / "dd", tmp_path / "z.txt"]) == ["t1", "t2", "z"]
    assert docs(tmp_path) == ["t1", "t2", "a", "b", "z"]


def test_list_of_sources(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b"}])
    stats = SourceStats()
    assert docs([tmp_path / "b.jsonl", str(tmp_path / "a.txt")], stats=stats) == ["b", "a"]
    assert stats.documents == 2


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "fine"}\n{"text": "broken" "x"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:3: invalid JSON \(Expecting ',' delimiter\)"):
        docs(path)


def test_missing_and_bad_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "x.jsonl",
        [{"text": "ok"}, {"content": "c", "id": 1}, {"text": 5}, {"text": "   "}, [1, 2], {"text": "last"}],
    )
    with pytest.raises(DataError, match=r"x.jsonl:2: missing text field 'text' \(keys: \['content', 'id'\]\)"):
        docs(path)
    stats = SourceStats()
    assert docs(path, on_error="skip", stats=stats) == ["ok", "last"]
    assert (stats.documents, stats.skipped) == (2, 4)
    assert [e.split(": ", 1)[0].rsplit(":", 1)[1] for e in stats.errors] == ["2", "3", "4", "5"]
    assert "is int" in stats.errors[1] and "empty text" in stats.errors[2] and "is list" in stats.errors[3]


def test_invalid_utf8(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff\xfe"}\n{"text": "c"}\n')
    with pytest.raises(DataError, match="x.jsonl:2: invalid UTF-8"):
        docs(path)
    assert docs(path, on_error="skip") == ["a", "c"]
    txt = tmp_path / "x.txt"
    txt.write_bytes(b"good\n<|endoftext|>\nbad \xff line\nsame doc\n<|endoftext|>\nalso good\n")
    with pytest.raises(DataError, match="x.txt:3: invalid UTF-8"):
        docs(txt)
    assert docs(txt, on_error="skip") == ["good", "also good"]


def test_nonexistent_and_unsupported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: no such file"):
        docs(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="no files match"):
        docs(str(tmp_path / "*.jsonl"))
    bad = tmp_path / "data.csv"
    bad.write_text("a,b\n")
    with pytest.raises(DataError, match=r"data.csv: unsupported file type.*\.txt/\.md/\.jsonl/\.json.*\.parquet"):
        docs(bad)
    with pytest.raises(DataError, match="no supported files found"):
        docs(str(tmp_path / "*.csv"))
    with pytest.raises(ValueError, match="on_error"):
        docs(bad, on_error="ignore")


def test_streams_lazily(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "first"}\nnot json\n')
    it = iter_documents(path)
    assert next(it) == "first"  # the bad line is only met when reached
    with pytest.raises(DataError):
        next(it)


def test_hub_spec(monkeypatch):
    assert parse_hub_spec("hf:roneneldan/TinyStories") == ("roneneldan/TinyStories", None, "train")
    assert parse_hub_spec("hf:allenai/c4:en@validation") == ("allenai/c4", "en", "validation")
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": "streamed"}, {"other": 1}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    stats = SourceStats()
    assert docs("hf:owner/name:cfg@val", on_error="skip", stats=stats) == ["streamed"]
    assert calls == [("owner/name", "cfg", "val", True)]
    assert stats.errors == ["hf:owner/name:cfg@val: row 1: missing text field 'text' (keys: ['other'])"]


def test_stats_keep_a_few_examples(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("oops\n" * 50 + '{"text": "ok"}\n')
    stats = SourceStats()
    assert docs(path, on_error="skip", stats=stats) == ["ok"]
    assert stats.skipped == 50 and len(stats.errors) == sources.MAX_EXAMPLE_ERRORS
