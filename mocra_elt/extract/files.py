"""Read CSV, JSON lines and Parquet files from a local folder or an S3 bucket.

The reader lists the files that match `source.glob` once, at the start of a run,
and reads them in (modification time, path) order, so a file written during the
run waits for the next run. With `incremental_by_modified` the watermark
`_file_modified` stores the newest modification time loaded and, as boundary
keys, the paths loaded at exactly that time. Later runs skip older files and
those paths, and read a rewritten file again in full.

Files are read in blocks (Parquet row groups, CSV and JSON lines blocks of
`BLOCK_SIZE` bytes) so memory stays bounded, and every row gets a `_source_file`
column with the file's path relative to `source.url`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa

from mocra_elt.audit.store import Watermark
from mocra_elt.config.model import SECRET_REFERENCE, CsvOptions, FilesSource
from mocra_elt.config.secrets import resolve_secret
from mocra_elt.errors import ConfigError, SourceError, TransientError
from mocra_elt.extract.base import ARROW_TYPES, ExtractContext, RejectedRecord, SourceReader

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

MODIFIED_CURSOR = "_file_modified"
SOURCE_FILE_COLUMN = "_source_file"

# CSV and JSON readers infer column types from the first block of each file.
BLOCK_SIZE = 16 << 20

EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}

# Declared text columns go to the CSV parser, so values such as 00123 keep their zeros. Other
# declared types are converted after parsing by `cast_rows`, which sets aside the records whose
# value does not convert instead of failing the whole file.
CSV_PARSER_TYPES = ("text",)


@dataclass(frozen=True)
class SourceFile:
    """One listed file: its fsspec path, its path relative to the source URL, and metadata."""

    path: str
    name: str
    modified: datetime  # UTC without a zone, like every timestamp in the audit tables
    size: int
    format: str = ""
    compression: str | None = None


class FilesReader(SourceReader):
    """Yield one Arrow table per block of each new or modified file."""

    def __init__(self, context: ExtractContext) -> None:
        super().__init__(context)
        source = self.pipeline.source
        if not isinstance(source, FilesSource):
            raise ConfigError(
                "FilesReader needs a source of type 'files'.", pipeline=self.pipeline.name
            )
        if self.cursor is not None and self.cursor.name == MODIFIED_CURSOR:
            raise ConfigError(
                f"pipeline {self.pipeline.name!r}: load.incremental.cursor may not be "
                f"{MODIFIED_CURSOR!r}, the name of the files source's own watermark. "
                "Choose a record field.",
                pipeline=self.pipeline.name,
                field="load.incremental.cursor",
            )
        self.source = source
        self.committed = (
            context.watermarks.get(MODIFIED_CURSOR) if source.incremental_by_modified else None
        )
        self.files_read: list[SourceFile] = []
        self.current: SourceFile | None = None
        self.first_types: dict[str, tuple[pa.DataType, str]] = {}

    def read(self) -> Iterator[pa.Table]:
        filesystem, root = open_filesystem(
            self.source, self.context.project_root, self.pipeline.name
        )
        listed = list_files(filesystem, root, self.source.glob, self.pipeline.name)
        pending = [self._with_format(file) for file in listed if self._is_new(file)]
        self.context.stats.update(
            files_matched=len(listed), files_skipped=len(listed) - len(pending), files_read=0
        )
        self.context.log.info(
            "%d of %d files under %s are new or modified", len(pending), len(listed), root
        )

        for file in pending:
            self.current = file
            yield from self._read_file(filesystem, file)
            self.files_read.append(file)
            self.bytes_read += file.size
            self.context.stats["files_read"] = len(self.files_read)

    def batches(self) -> Iterator[pa.Table]:
        """Yield the base class's batches, after checking that column types agree across files."""
        for table in super().batches():
            self._check_types(table)
            yield table

    def watermarks(self) -> list[Watermark]:
        """Return the record cursor's watermark, if any, and the new `_file_modified` one."""
        marks = super().watermarks()
        mark = self._modified_watermark()
        return [*marks, mark] if mark is not None else marks

    def _is_new(self, file: SourceFile) -> bool:
        # NOTE: a file that arrives with a modification time older than the watermark, as
        # `cp -p` or `rsync -t` can produce, is never read. Touch it to have it loaded.
        committed = self.committed
        if committed is None:
            return True
        if file.modified != committed.value:
            return bool(file.modified > committed.value)
        return file.name not in committed.boundary_keys

    def _with_format(self, file: SourceFile) -> SourceFile:
        file_format, compression = detect_format(file.name, self.source.format, self.pipeline.name)
        return SourceFile(file.path, file.name, file.modified, file.size, file_format, compression)

    def _read_file(self, filesystem: AbstractFileSystem, file: SourceFile) -> Iterator[pa.Table]:
        if file.size == 0:
            self.context.log.info("file %r is empty", file.name)
            return
        network_errors = _network_errors()
        try:
            with filesystem.open(file.path, "rb", compression=file.compression) as handle:
                for table in self._blocks(handle, file):
                    yield _tag(table, file.name)
        except FileNotFoundError:
            # Deleted after the listing: there is nothing left to load.
            self.context.log.warning("file %r was removed before it could be read", file.name)
        except network_errors as error:
            raise _unavailable(error, file.path, self.pipeline.name) from error
        except PermissionError as error:
            raise _denied(error, file.path, self.pipeline.name) from error
        except (pa.ArrowException, OSError, ValueError, EOFError) as error:
            raise _unreadable(error, file, self.pipeline.name) from error

    def _blocks(self, handle: IO[bytes], file: SourceFile) -> Iterator[pa.Table]:
        columns = self.pipeline.load.columns
        rejected = self.context.rejected
        if file.format == "parquet":
            return _parquet_blocks(handle)
        if file.format == "csv":
            types = _parser_types(columns, CSV_PARSER_TYPES)
            return _csv_blocks(handle, self.source.csv, types, file.name, rejected)
        return _jsonl_blocks(handle, file.name, rejected)

    def _check_types(self, table: pa.Table) -> None:
        file_name = self.current.name if self.current else "?"
        for field in table.schema:
            first = self.first_types.setdefault(field.name, (field.type, file_name))
            if first[0] != field.type:
                raise _type_conflict(field.name, first, (field.type, file_name), self.pipeline.name)

    def _modified_watermark(self) -> Watermark | None:
        if not self.source.incremental_by_modified or not self.files_read:
            return None
        newest = self.files_read[-1].modified
        names = {file.name for file in self.files_read if file.modified == newest}
        if self.committed is not None and self.committed.value == newest:
            names |= set(self.committed.boundary_keys)
        return Watermark(MODIFIED_CURSOR, newest, "timestamp", sorted(names))


# --- listing ----------------------------------------------------------------------------------


def open_filesystem(
    source: FilesSource, project_root: Path | None, pipeline: str
) -> tuple[AbstractFileSystem, str]:
    """Return the fsspec filesystem of `source.url` and the folder or bucket prefix to list."""
    import fsspec

    url = resolve_url(source.url, project_root)
    # A fresh instance per run, so no listing cached by an earlier run hides new files.
    options = {"skip_instance_cache": True, **resolve_options(source.storage_options, pipeline)}
    try:
        filesystem, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError, TypeError) as error:
        raise ConfigError(
            f"pipeline {pipeline!r}: cannot open source.url {source.url!r}: {error}. "
            "Check source.url and source.storage_options.",
            pipeline=pipeline,
            field="source.storage_options",
        ) from error
    return filesystem, root.rstrip("/") or root


def resolve_url(url: str, project_root: Path | None) -> str:
    """Return `url` with a relative local folder made absolute against the project root."""
    if "://" in url:
        return url
    path = Path(url).expanduser()
    if not path.is_absolute():
        path = (project_root or Path.cwd()) / path
    return str(path)


def resolve_options(options: Mapping[str, Any], pipeline: str) -> dict[str, Any]:
    """Return storage options with every `${env:...}` or `${secret:...}` value resolved."""
    return {
        key: _resolve(value, f"source.storage_options.{key}", pipeline)
        for key, value in options.items()
    }


def _resolve(value: Any, field: str, pipeline: str) -> Any:
    if isinstance(value, str) and SECRET_REFERENCE.match(value):
        return resolve_secret(value, pipeline=pipeline, field=field)
    if isinstance(value, Mapping):
        return {key: _resolve(item, f"{field}.{key}", pipeline) for key, item in value.items()}
    return value


def list_files(
    filesystem: AbstractFileSystem, root: str, pattern: str, pipeline: str
) -> list[SourceFile]:
    """Return the files under `root` that match `pattern`, sorted by (modified, name).

    Names with a component that starts with a dot are left out, so hidden files and
    the temporary files of writers that rename into place are never read.
    """
    found: dict[str, dict[str, Any]] = {}
    try:
        for alternative in expand_braces(pattern):
            found.update(filesystem.glob(f"{root}/{alternative.lstrip('/')}", detail=True))
        if not found:
            _check_root(filesystem, root, pipeline)
    except _network_errors() as error:
        raise _unavailable(error, root, pipeline) from error
    except PermissionError as error:
        raise _denied(error, root, pipeline) from error

    files = [
        _source_file(path, info, root, pipeline)
        for path, info in found.items()
        if info.get("type") == "file"
    ]
    visible = [file for file in files if not _is_hidden(file.name)]
    return sorted(visible, key=lambda file: (file.modified, file.name))


def expand_braces(pattern: str) -> list[str]:
    """Expand `{a,b}` alternatives, which fsspec's glob does not support.

    >>> expand_braces("*.{parquet,csv}")
    ['*.parquet', '*.csv']
    >>> expand_braces("{2012,2013}/*.{csv,jsonl}")
    ['2012/*.csv', '2012/*.jsonl', '2013/*.csv', '2013/*.jsonl']
    """
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, parts, part_start = 0, [], start + 1
    for index in range(start, len(pattern)):
        char = pattern[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                parts.append(pattern[part_start:index])
                head, tail = pattern[:start], pattern[index + 1 :]
                return [
                    expanded for part in parts for expanded in expand_braces(head + part + tail)
                ]
        elif char == "," and depth == 1:
            parts.append(pattern[part_start:index])
            part_start = index + 1
    return [pattern]  # an unclosed brace is a literal character


def _check_root(filesystem: AbstractFileSystem, root: str, pipeline: str) -> None:
    """Raise when the folder or bucket is missing. An existing empty one is fine."""
    if _is_local(filesystem):
        if filesystem.isdir(root):
            return
        problem = f"source.url names the folder {root}, which does not exist"
        if filesystem.isfile(root):
            problem = f"source.url names the file {root}, not a folder"
    else:
        bucket = root.split("/", 1)[0]
        try:
            filesystem.info(bucket)
            return
        except FileNotFoundError:
            problem = f"source.url names the bucket {bucket!r}, which does not exist"
    raise SourceError(
        f"pipeline {pipeline!r}: {problem}. Point source.url at the folder or bucket prefix "
        "that holds the files, and select files with source.glob.",
        pipeline=pipeline,
        stage="extract",
        error_code="CONFIG_NOT_FOUND",
        file=root,
    )


def _source_file(path: str, info: dict[str, Any], root: str, pipeline: str) -> SourceFile:
    name = path[len(root) + 1 :] if path.startswith(root + "/") else posixpath.basename(path)
    return SourceFile(path, name, _modified(info, path, pipeline), int(info.get("size") or 0))


def _modified(info: dict[str, Any], path: str, pipeline: str) -> datetime:
    """Return the modification time as UTC without a zone, at microsecond precision."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    raise SourceError(
        f"pipeline {pipeline!r}: the file system reports no modification time for {path!r}. "
        "Set source.incremental_by_modified to false to read every file on each run.",
        pipeline=pipeline,
        stage="extract",
        file=path,
    )


def _is_hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/"))


def _is_local(filesystem: AbstractFileSystem) -> bool:
    protocols = filesystem.protocol
    return "file" in (protocols if isinstance(protocols, tuple | list) else (protocols,))


# --- parsing ----------------------------------------------------------------------------------


def detect_format(name: str, configured: str | None, pipeline: str) -> tuple[str, str | None]:
    """Return (format, compression) of a file from `source.format` or its extensions."""
    from fsspec.utils import infer_compression

    compression = infer_compression(name)
    if configured is not None:
        return configured, compression
    stem = name.rsplit(".", 1)[0] if compression else name
    file_format = EXTENSIONS.get(posixpath.splitext(stem)[1].lower())
    if file_format is None:
        raise SourceError(
            f"pipeline {pipeline!r}: cannot tell the format of file {name!r} from its "
            f"extension (known: {', '.join(EXTENSIONS)}). Set source.format, or narrow "
            "source.glob to the data files.",
            pipeline=pipeline,
            stage="extract",
            error_code="SOURCE_FILE_UNREADABLE",
            file=name,
        )
    return file_format, compression


def _parquet_blocks(handle: IO[bytes]) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(handle)
    for index in range(parquet.num_row_groups):
        yield parquet.read_row_group(index)


def _csv_blocks(
    handle: IO[bytes],
    options: CsvOptions,
    types: dict[str, pa.DataType],
    file_name: str,
    rejected: list[RejectedRecord],
) -> Iterator[pa.Table]:
    """Yield CSV blocks; rows with the wrong number of fields go to `rejected`."""
    import pyarrow.csv as pacsv

    malformed: list[Any] = []

    def set_aside(row: Any) -> str:
        malformed.append(row)
        return "skip"

    reader = pacsv.open_csv(
        handle,
        read_options=pacsv.ReadOptions(
            block_size=BLOCK_SIZE,
            autogenerate_column_names=not options.header,
            use_threads=False,  # line numbers of malformed rows are known only without threads
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=options.delimiter, invalid_row_handler=set_aside
        ),
        convert_options=pacsv.ConvertOptions(
            null_values=options.null_values, strings_can_be_null=True, column_types=types
        ),
    )
    names = reader.schema.names
    header = _csv_line(names, options.delimiter) if options.header else None
    try:
        for batch in reader:
            rejected.extend(_malformed_records(malformed, file_name, header))
            malformed.clear()
            yield pa.Table.from_batches([batch])
    except pa.ArrowInvalid as error:
        raise _name_csv_column(error, names) from error
    rejected.extend(_malformed_records(malformed, file_name, header))


def _malformed_records(rows: list[Any], file_name: str, header: str | None) -> list[RejectedRecord]:
    return [
        RejectedRecord(
            source_ref=f"{file_name} line {row.number}" if row.number else file_name,
            payload=row.text,
            payload_format="csv",
            header=header,
            error=f"expected {row.expected_columns} fields, found {row.actual_columns}",
        )
        for row in rows
    ]


def _csv_line(values: list[str], delimiter: str) -> str:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="").writerow(values)
    return buffer.getvalue()


def _jsonl_blocks(
    handle: IO[bytes], file_name: str, rejected: list[RejectedRecord]
) -> Iterator[pa.Table]:
    """Yield JSON-lines blocks cut at line ends; lines that are not JSON objects are set aside.

    Later blocks are parsed with the schema inferred from the first one, so a column
    keeps its type across the file; new fields are still inferred.
    """
    schema: pa.Schema | None = None
    carry = b""
    first_line = 1
    rejected_before = len(rejected)
    while True:
        chunk = handle.read(BLOCK_SIZE)
        data = carry + chunk
        cut = data.rfind(b"\n") + 1 if chunk else len(data)
        block, carry = data[:cut], data[cut:]
        if block.strip():
            table = _parse_json_block(block, schema, first_line, file_name, rejected)
            if table is not None:
                schema = schema or table.schema
                yield table
        first_line += block.count(b"\n")
        if not chunk:
            break
    if schema is None and len(rejected) > rejected_before:
        # Not one line parsed: the file is not JSON lines, so fail it rather than dead-letter it.
        first = rejected[rejected_before]
        del rejected[rejected_before:]
        raise ValueError(f"no line is a JSON object ({first.source_ref}: {first.error})")


def _parse_json_block(
    block: bytes,
    schema: pa.Schema | None,
    first_line: int,
    file_name: str,
    rejected: list[RejectedRecord],
) -> pa.Table | None:
    import io
    import json

    import pyarrow.json as pajson

    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
    try:
        return pajson.read_json(io.BytesIO(block), parse_options=options)
    except pa.ArrowInvalid:
        pass
    good: list[bytes] = []
    for number, line in enumerate(block.splitlines(), start=first_line):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
            if not isinstance(document, dict):
                raise ValueError(f"expected a JSON object, found {type(document).__name__}")
        except ValueError as error:
            text = line.decode("utf-8", errors="replace")
            rejected.append(
                RejectedRecord(
                    f"{file_name} line {number}", text, "jsonl", f"invalid JSON: {error}"
                )
            )
            continue
        good.append(line)
    if not good:
        return None
    return pajson.read_json(io.BytesIO(b"\n".join(good)), parse_options=options)


def _parser_types(columns: Mapping[str, str], allowed: tuple[str, ...]) -> dict[str, pa.DataType]:
    return {name: ARROW_TYPES[kind] for name, kind in columns.items() if kind in allowed}


def _name_csv_column(error: pa.ArrowInvalid, names: list[str]) -> pa.ArrowInvalid:
    """Add the column name to pyarrow's `In CSV column #3: ...` messages."""
    match = re.search(r"CSV column #(\d+)", str(error))
    if match is None or int(match.group(1)) >= len(names):
        return error
    return pa.ArrowInvalid(f"column {names[int(match.group(1))]!r}: {error}")


def _tag(table: pa.Table, name: str) -> pa.Table:
    """Append the `_source_file` column and make every field nullable, as loads expect."""
    if SOURCE_FILE_COLUMN in table.column_names:
        table = table.drop_columns([SOURCE_FILE_COLUMN])
    table = table.append_column(SOURCE_FILE_COLUMN, pa.repeat(name, table.num_rows))
    if all(field.nullable for field in table.schema):
        return table
    return table.cast(pa.schema([field.with_nullable(True) for field in table.schema]))


# --- errors -----------------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import aiohttp
        import botocore.exceptions

        errors += [
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            aiohttp.ClientError,
        ]
    except ImportError:  # s3fs is not installed, so no S3 errors can occur
        pass
    return tuple(errors)


def _unavailable(error: BaseException, where: str, pipeline: str) -> TransientError:
    return TransientError(
        f"pipeline {pipeline!r}: cannot reach the storage of {where!r}: {error}. "
        "Check source.url and source.storage_options.endpoint_url, then retry.",
        pipeline=pipeline,
        stage="extract",
        error_code="SOURCE_UNAVAILABLE",
        file=where,
    )


def _denied(error: BaseException, where: str, pipeline: str) -> SourceError:
    return SourceError(
        f"pipeline {pipeline!r}: access to {where!r} was denied: {error}. "
        "Check the credentials in source.storage_options.",
        pipeline=pipeline,
        stage="extract",
        error_code="SOURCE_AUTH",
        file=where,
    )


def _unreadable(error: BaseException, file: SourceFile, pipeline: str) -> SourceError:
    detail = " ".join(str(error).split()).rstrip(".") or type(error).__name__
    hint = "Fix or remove the file, or leave it out with source.glob."
    if "conversion error" in detail or "Column(/" in detail:
        hint = (
            "Column types come from load.columns or, for other columns, from the first "
            f"{BLOCK_SIZE >> 20} MiB of each file. Declare or correct the column's type under "
            "load.columns."
        )
    elif "Column() changed from object to array" in detail or "found list" in detail:
        hint = "The file holds a JSON array; write one JSON object per line instead."
    kind = {"csv": "CSV", "parquet": "Parquet", "jsonl": "JSON lines (one object per line)"}
    return SourceError(
        f"pipeline {pipeline!r}: file {file.name!r} could not be read as "
        f"{kind.get(file.format, file.format)}: {detail}. " + hint,
        pipeline=pipeline,
        stage="extract",
        error_code="SOURCE_FILE_UNREADABLE",
        file=file.path,
    )


def _type_conflict(
    column: str,
    first: tuple[pa.DataType, str],
    other: tuple[pa.DataType, str],
    pipeline: str,
) -> SourceError:
    return SourceError(
        f"pipeline {pipeline!r}: column {column!r} is {first[0]} in file {first[1]!r} but "
        f"{other[0]} in file {other[1]!r}, and one load needs one type per column. Declare it "
        f"under load.columns, e.g. '{column}: {_common_type(first[0], other[0])}'.",
        pipeline=pipeline,
        stage="extract",
        error_code="RECORD_PARSE_ERROR",
        column=column,
        file=other[1],
    )


def _common_type(first: pa.DataType, other: pa.DataType) -> str:
    """Return the load.columns type that can store the values of both Arrow types."""
    kinds = {_column_type(first), _column_type(other)}
    if kinds == {"bigint", "double"}:
        return "double"
    return kinds.pop() if len(kinds) == 1 else "text"


def _column_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_integer(arrow_type):
        return "bigint"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "double"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    return "text"
