"""Stream text documents out of files, directories, globs and HF datasets.

Everything is a generator: lines, parquet record batches and dataset rows are
read one at a time, so a corpus larger than RAM streams through. One reader
serves both `iter_records` (whole records) and `iter_documents` (their text
field, and plain-text files). The two
exceptions are said where they happen (a whole `.json` file, and a text file
without separators being one document).

A source is one of
  - `file.txt` / `file.md`: one document per file, or several if the file
    contains `<|endoftext|>` separators; a UTF-8 BOM is dropped, CRLF line
    ends become LF and each document's surrounding whitespace is stripped;
  - `file.jsonl`: one JSON object per line, text under `text_field`;
  - `file.json`: an array of objects, or an object holding one such array;
  - `file.parquet`: text in the column `text_field`;
  - any text format above gzip-compressed with a further `.gz`;
  - a directory written by `datasets.save_to_disk` (the "train" split of a
    DatasetDict, or `dir::split` for another; `::split` after any other
    source is an error);
  - `hf:owner/name[:config][@split]`: a Hugging Face Hub dataset, streamed
    (needs network);
  - a directory (every supported file inside, recursively, in sorted order), a
    glob pattern (`data/*.txt`), or a list of any of these.

A JSON record may also be a bare string, which is then the document itself.
Bad records (invalid JSON or UTF-8, a missing, non-string or empty text
field) raise `DataError` naming the file and line (1-based, as in an editor),
or the row / record (0-based, as in pandas/datasets for parquet, datasets and
.json), or are skipped and counted in `SourceStats` with `on_error="skip"`.
Problems with the source itself (missing path, unsupported file type, no such
split, a corrupt or truncated .gz or parquet file) always raise, naming the
file and the last line or row read.
"""

from __future__ import annotations

import glob
import gzip
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

DOC_SEPARATOR = "<|endoftext|>"
TEXT_FORMATS = (".txt", ".md", ".jsonl", ".json")
SUPPORTED = (
    "a .txt/.md/.jsonl/.json file (optionally .gz), a .parquet file, a directory, a glob pattern, "
    "a datasets save_to_disk directory (optionally dir::split), or hf:owner/name[:config][@split]"
)
MAX_EXAMPLE_ERRORS = 5

Source = str | Path | Sequence[str | Path]


class DataError(ValueError):
    """A malformed record, or a file that can't be read as the documents it claims to hold."""


class RecordError(DataError):
    """A bad record that stopped the run, which `on_error="skip"` would have skipped and counted."""


@dataclass
class SourceStats:
    documents: int = 0  # good records read
    skipped: int = 0  # bad ones skipped: documents + skipped is every record read
    errors: list[str] = field(default_factory=list)  # the first few skip reasons, as examples

    def record_skip(self, error: DataError) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_EXAMPLE_ERRORS:
            self.errors.append(str(error))

    def reject(self, error: DataError) -> None:
        """A record already counted as read that its format turned out not to fit: skipped instead."""
        self.documents -= 1
        self.record_skip(error)


def iter_documents(
    source: Source,
    text_field: str = "text",
    on_error: Literal["raise", "skip"] = "raise",
    stats: SourceStats | None = None,
) -> Iterator[str]:
    """Yield the documents of `source` in a deterministic order (see the module docstring): the text field of
    each of its records, and the documents of its plain-text files."""
    texts = (
        item if isinstance(item, DataError) else _text_of(item.record, text_field, item.where)
        for item in _read(source, text_field)
    )
    return _raise_or_skip(texts, on_error, stats)


def iter_named_documents(
    source: Source,
    text_field: str = "text",
    on_error: Literal["raise", "skip"] = "raise",
    stats: SourceStats | None = None,
) -> Iterator[tuple[str, str]]:
    """(name, document) for every document of `source`: the file (or dataset) it came from, with #i for the i-th
    (0-based) of a file holding several."""
    for spec in source if isinstance(source, (list, tuple)) else [source]:
        one = isinstance(spec, str) and spec.startswith("hf:") or "::" in str(spec)
        for file in [str(spec)] if one else [str(f) for f in _expand(str(spec))]:
            docs = list(iter_documents(file, text_field, on_error, stats))
            yield from ((f"{file}#{i}" if len(docs) > 1 else file, d) for i, d in enumerate(docs))


T = TypeVar("T")


def _raise_or_skip(items: Iterable[T | DataError], on_error: str, stats: SourceStats | None) -> Iterator[T]:
    """The one place where a bad record either stops the run or is skipped and counted."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    stats = stats if stats is not None else SourceStats()
    for item in items:
        if isinstance(item, DataError):
            if on_error == "raise":
                raise RecordError(str(item))
            stats.record_skip(item)
        else:
            stats.documents += 1
            yield item


class RecordAt(NamedTuple):
    file: str  # the file (or dataset) it came from: formats are detected per file
    where: str  # file:line, or file: record/row N, for error messages
    record: dict[str, Any]


def iter_records(
    source: Source, on_error: Literal["raise", "skip"] = "raise", stats: SourceStats | None = None
) -> Iterator[RecordAt]:
    """Yield structured records (JSON objects, parquet or dataset rows) with where they came from.

    `iter_documents` reads the same records and keeps their text field; plain-text files hold no records and are
    an error here.
    """
    objects = (
        DataError(f"{item.where}: expected a JSON object, got {type(item.record).__name__}")
        if isinstance(item, RecordAt) and not isinstance(item.record, dict)
        else item
        for item in _read(source, None)
    )
    return _raise_or_skip(objects, on_error, stats)


def iter_detected(
    records: Iterable[tuple[str, str, dict[str, Any]]],
    detect: Callable[[str, dict[str, Any]], str | None],
    convert: Callable[[dict[str, Any], str], T],
    kind: str,
    expected: str,
    on_error: Literal["raise", "skip"],
    stats: SourceStats,
) -> Iterator[T]:
    """Records of many formats, each file's format detected from its first record: convert(record, format) for
    every record. A record that fits no format, or breaks its file's, is a DataError naming file:line and what is
    wrong, raised or skipped and counted (the records come counted as read: `stats.reject` moves one to the skipped).
    The instruction, task and preference readers share this."""
    formats: dict[str, str] = {}
    for file, where, record in records:
        try:
            if file not in formats:
                fmt = detect(file, record)
                if fmt is None:
                    raise DataError(f"{where}: no {kind} format fits the keys {sorted(record)}; expected {expected}")
                formats[file] = fmt
            fmt = formats[file]
            try:
                converted = convert(record, fmt)
            except (KeyError, TypeError, ValueError) as e:
                detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
                raise DataError(f"{where}: bad {fmt} record: {detail}") from None
        except DataError as e:
            if on_error == "raise":
                raise RecordError(str(e)) from None
            stats.reject(e)
            continue
        yield converted


def _read(source: Source, text_field: str | None) -> Iterator[RecordAt | DataError]:
    """The one dispatcher: every record of `source` with where it came from, and the DataErrors met on the way.

    With `text_field` None: whole records, and plain text is an error. With a text field, only what
    `iter_documents` reads of them: plain-text files give their documents as bare-string records, parquet files
    and saved datasets their text column's values, read alone (and checked to be there first), and a .json object
    holding the field is one record. `dir::split` names a split of a saved dataset, and only of one.
    """
    if isinstance(source, (list, tuple)):
        for s in source:
            yield from _read(s, text_field)
        return
    if isinstance(source, str) and source.startswith("hf:"):
        import datasets  # slow to import; only needed for this source

        name, config, hub_split = parse_hub_spec(source)
        for row, record in enumerate(datasets.load_dataset(name, config, split=hub_split, streaming=True)):
            yield RecordAt(source, f"{source}: row {row}", record)
        return
    spec = str(source)
    split: str | None = None
    if "::" in spec:
        path, split = spec.rsplit("::", 1)
        if not _is_saved_dataset(Path(path)):
            raise DataError(f"{path}: '::{split}' selects a split, but this is not a datasets save_to_disk directory")
        files = [Path(path)]
    else:
        files = _expand(spec)
    for file in files:
        where = str(file)
        if _is_saved_dataset(file):
            raw: Iterator[tuple[str, Any] | DataError] = _saved_dataset_rows(file, split, text_field)
        elif _kind(file) == ".jsonl":
            raw = _jsonl_raw(file)
        elif _kind(file) == ".json":
            raw = _json_raw(file, text_field)
        elif _kind(file) == ".parquet":
            raw = _parquet_rows(file, text_field)
        elif text_field is None:
            raise DataError(f"{file}: plain text holds no records; use .jsonl, .json, .parquet or a dataset")
        else:
            raw = (doc if isinstance(doc, DataError) else (where, doc) for doc in _text_records(file))
        for item in raw:
            yield item if isinstance(item, DataError) else RecordAt(where, *item)


# Readers below yield records (or documents) and DataErrors alike, so that the decision to
# raise or skip is made once, in _raise_or_skip.
Record = str | DataError


def _expand(spec: str) -> list[Path]:
    """Turn a path or glob into the files (and saved-dataset directories) it names."""
    path = Path(spec)
    if path.exists():
        found = list(_walk(path, explicit=True))
    elif glob.has_magic(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise FileNotFoundError(f"{spec}: no files match this pattern")
        found = [f for m in matches for f in _walk(Path(m), explicit=False)]
    else:
        raise FileNotFoundError(f"{spec}: no such file or directory")
    if not found:
        raise DataError(f"{spec}: no supported files found; a source is {SUPPORTED}")
    return found


def _walk(path: Path, explicit: bool) -> Iterator[Path]:
    """A file, a saved dataset, or a directory's supported files depth-first in sorted order.

    A file named explicitly must be supported; files met while walking a
    directory or matched by a glob are skipped when they aren't (a README.rst
    next to the data).
    """
    if _is_saved_dataset(path):
        yield path
    elif path.is_dir():
        for child in sorted(path.iterdir()):
            if not child.name.startswith("."):  # .git, .cache, editor files
                yield from _walk(child, explicit=False)
    elif _kind(path) is not None:
        yield path
    elif explicit:
        raise DataError(f"{path}: unsupported file type; a source is {SUPPORTED}")


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return ".parquet"
    name = name.removesuffix(".gz")  # parquet compresses internally; text formats may be gzipped
    return next((suffix for suffix in TEXT_FORMATS if name.endswith(suffix)), None)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


# what gzip raises on a file that isn't gzip, is cut short, or is damaged inside
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def _gzip_error(path: Path, e: BaseException, lineno: int | None) -> DataError:
    """One line for a .gz file that can't be decompressed: which file, how far it was read, what to do."""
    read = f" after line {lineno}" if lineno else ""
    if isinstance(e, gzip.BadGzipFile) and str(e).startswith("Not a gzipped file"):
        return DataError(f"{path}: not gzip data ({e}); rename the file without .gz, or compress it with gzip")
    what = "ends early (truncated)" if isinstance(e, EOFError) else f"is corrupt ({e})"
    return DataError(
        f"{path}: the gzip stream {what}{read}; copy or download the file again (`gzip -t {path}` checks a file)"
    )


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | DataError]]:
    """(line number, text or decoding error) for each line, BOM stripped, CRLF turned into LF.

    Lines are decoded one by one so that a bad byte costs one line, not the file.
    """
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield (
                        lineno,
                        DataError(
                            f"{path}:{lineno}: invalid UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8"
                        ),
                    )
                    continue
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                if line.endswith("\r\n"):
                    line = line[:-2] + "\n"
                yield lineno, line
    except GZIP_ERRORS as e:
        raise _gzip_error(path, e, lineno) from None


def _text_records(path: Path) -> Iterator[Record]:
    """Documents of a text file: split on separators, surrounding whitespace stripped.

    A file without separators is a single document and so has to fit in
    memory; put large corpora in several files or separate their documents.
    Whitespace-only pieces (say, after a trailing separator) are dropped
    silently rather than reported as empty documents.
    """
    parts: list[str] = []
    error: DataError | None = None  # the first bad line of the current document
    for _, line in _decoded_lines(path):
        if isinstance(line, DataError):
            error = error or line
            continue
        *ended, rest = line.split(DOC_SEPARATOR)
        for piece in ended:
            yield from _text_document([*parts, piece], error)
            parts, error = [], None
        parts.append(rest)
    yield from _text_document(parts, error)


def _text_document(parts: list[str], error: DataError | None) -> Iterator[Record]:
    """The document made of `parts`, or its first decoding error, or nothing if it is blank."""
    if error is not None:
        yield error
    elif doc := "".join(parts).strip():
        yield doc


def _jsonl_raw(path: Path) -> Iterator[tuple[str, Any] | DataError]:
    for lineno, line in _decoded_lines(path):
        if isinstance(line, DataError):
            yield line
            continue
        if not line.strip():
            continue  # blank lines (often a trailing one) are not records
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            yield DataError(f"{where}: invalid JSON ({e.msg})")


def _json_raw(path: Path, text_field: str | None) -> Iterator[tuple[str, Any] | DataError]:
    """Records of a .json file, which is parsed whole: the stdlib can't stream a JSON array.

    Use .jsonl for corpora that don't fit in memory.
    """
    try:
        with _open_binary(path) as f:
            raw = f.read()
    except GZIP_ERRORS as e:
        raise _gzip_error(path, e, None) from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        yield DataError(f"{path}: invalid UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8")
        return
    except json.JSONDecodeError as e:
        yield DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})")
        return
    if isinstance(data, dict) and (text_field is None or text_field not in data):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            yield DataError(
                f"{path}: expected an array of records, or an object with exactly one array "
                f"or a {text_field!r} field (keys: {sorted(data)})"
            )
            return
        data = data[lists[0]]
    records = data if isinstance(data, list) else [data]
    for i, record in enumerate(records):
        yield f"{path}: record {i}", record


def _text_of(record: Any, text_field: str, where: str) -> Record:
    if isinstance(record, dict):
        if text_field not in record:
            return DataError(f"{where}: missing text field {text_field!r} (keys: {sorted(record)})")
        text = record[text_field]
    else:
        text = record
    return _check_text(text, text_field, where)


def _check_text(text: Any, text_field: str, where: str) -> Record:
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        return DataError(f"{where}: text field {text_field!r} is {kind}, expected a string")
    if not text.strip():
        return DataError(f"{where}: empty text in field {text_field!r}")
    return text


def _parquet_batches(pf: pq.ParquetFile, path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The file's record batches; damage found while reading them ends in one line naming the file."""
    rows = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            yield batch
            rows += batch.num_rows
    except (OSError, pa.ArrowException) as e:
        raise DataError(
            f"{path}: corrupt parquet data after row {rows} ({e}); copy or download the file again"
        ) from None


def _load_split(path: Path, split: str | None):
    import datasets  # imported here because it is slow to import and only needed for this source

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = split or "train"
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} (splits: {list(ds)}); pick one with {path}::SPLIT")
        ds = ds[split]
    elif split is not None:
        raise DataError(f"{path}: a single dataset has no splits, drop '::{split}'")
    return ds


def _saved_dataset_rows(path: Path, split: str | None, text_field: str | None) -> Iterator[tuple[str, Any] | DataError]:
    """(where, row) for each row of a saved dataset; with a text field, that column's value (a bare record) of
    each row, the column checked to be there."""
    ds = _load_split(path, split)
    if text_field is not None:
        if text_field not in ds.column_names:
            yield DataError(f"{path}: missing text column {text_field!r} (columns: {ds.column_names})")
            return
        ds = ds.select_columns([text_field])
    # Arrow-backed and memory-mapped: rows are read from disk as they are needed, one column in batches.
    yield from _numbered_rows(path, (b[text_field] for b in ds.iter(batch_size=1024)) if text_field else [ds])


def _parquet_rows(path: Path, text_field: str | None) -> Iterator[tuple[str, Any] | DataError]:
    """(where, row) for each row of a parquet file; with a text field, that column's value (a bare record) of each
    row, the column checked to be there and to hold strings."""
    try:
        pf = pq.ParquetFile(path)
    except pa.ArrowInvalid as e:
        yield DataError(f"{path}: not a readable parquet file ({e})")
        return
    if text_field is not None:
        schema = pf.schema_arrow
        if text_field not in schema.names:
            yield DataError(f"{path}: missing text column {text_field!r} (columns: {schema.names})")
            return
        column_type = schema.field(text_field).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            yield DataError(f"{path}: text column {text_field!r} has type {column_type}, expected string")
            return
    batches = _parquet_batches(pf, path, None if text_field is None else [text_field])
    yield from _numbered_rows(path, (b.column(0).to_pylist() if text_field else b.to_pylist() for b in batches))


def _numbered_rows(path: Path, batches: Iterable[list[Any]]) -> Iterator[tuple[str, Any]]:
    row = 0
    for records in batches:
        for record in records:
            yield f"{path}: row {row}", record
            row += 1


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """`hf:owner/name[:config][@split]` -> (name, config, split), split defaulting to "train"."""
    rest = spec.removeprefix("hf:")
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition(":")
    if not name:
        raise DataError(f"{spec}: expected hf:owner/name[:config][@split]")
    return name, config or None, split or "train"
