"""The one way the project reads a Parquet file: plain Arrow columns only, extension types refused unread.

Why: pyarrow rebuilds a column typed with a *registered* Arrow extension type as that type's Python array and
scalar classes, and those classes decide how a value becomes a Python object. Importing ``ray.data`` (every driver
and every Ray worker does) registers ``ray.data.arrow_pickled_object``, whose values become objects by
``pickle.load``: from then on ``to_pylist()``, ``as_py()``, ``to_numpy()`` or ``to_pandas()`` on such a column runs
whatever code the file's author stored in it. Ray's own ``read_parquet`` refuses that type; a direct pyarrow read
does not. Manifests, token-cache entries (``rows.parquet``, ``quarantine.parquet``, ``data/part-*.parquet``),
row-reuse sources and stream parts on ``s3://`` may all come from someone else, so every read goes through here
(``tests/reliability/test_poisoned_parquet.py`` fails when a direct ``pq.read_table``/``ParquetFile`` call appears
anywhere else under ``higgs_train/``).

How: ``open_plain_parquet_file`` opens the footer and looks at the Arrow schema pyarrow rebuilt from its
``ARROW:schema`` metadata; a column that is, or nests (list item, struct or map field, dictionary values), an
extension type is refused with ``UnsafeParquetError`` -- one line naming the file and the column -- before a
single value is read. Both spellings are caught: a registered type appears as an ``ExtensionType`` instance, an
unregistered one as its storage type with ``ARROW:extension:name`` in the field metadata, so the decision does not
depend on what this process happened to import. Every extension type is refused, not only Ray's: no file the project
writes uses one, and for any of them it is the type's Python code that turns values into objects.

Why not the alternatives:

* an explicit read schema alone (``pq.read_table(schema=...)``) casts the column's storage and never unpickles, but
  it is only as safe as every caller's schema, manifests have an open set of columns, and the file is still
  accepted: here it is refused and the caller decides (manifest: an error before Ray starts; cache entry: rebuilt;
  stream part: republished by the driver, refused by the worker);
* unregistering the extension type while reading is process-wide: Ray Data running in other threads of the same
  process relies on it, and a reader thread racing the re-registration would see either state.

What opening a footer runs: to rebuild a registered type pyarrow calls its ``__arrow_ext_deserialize__`` with the
field's stored metadata. Ray's pickled-object type ignores those bytes, Ray's tensor types parse them as JSON
(cloudpickle only when ``RAY_DATA_AUTOLOAD_CLOUDPICKLE_TENSOR_METADATA`` opts in, which must stay unset for
untrusted files), pyarrow's canonical types are C++. A test plants a pickle payload in that metadata too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

EXTENSION_NAME_KEY = b"ARROW:extension:name"


class UnsafeParquetError(ValueError):
    """A Parquet file holds an extension-typed column; the message names the file and the column."""


def _extension_in_type(dtype: pa.DataType) -> tuple[str, str] | None:
    """(nested field path or "", extension name) of the first extension type in ``dtype``, else None."""
    if isinstance(dtype, pa.BaseExtensionType):
        return "", dtype.extension_name
    if pa.types.is_dictionary(dtype):  # reports no fields: its values are a type of their own
        return _extension_in_type(dtype.value_type)
    for i in range(dtype.num_fields):
        found = _extension_in_field(dtype.field(i))
        if found is not None:
            return found
    return None


def _extension_in_field(field: pa.Field) -> tuple[str, str] | None:
    name = (field.metadata or {}).get(EXTENSION_NAME_KEY)
    if name is not None:
        return field.name, name.decode("utf-8", "replace")
    found = _extension_in_type(field.type)
    if found is None:
        return None
    inner, extension = found
    return (f"{field.name}.{inner}" if inner else field.name), extension


def extension_columns(schema: pa.Schema) -> list[tuple[str, str]]:
    """(column, extension type name) for every column of ``schema`` that is or nests an extension type."""
    found = []
    for field in schema:
        hit = _extension_in_field(field)
        if hit is not None:
            found.append(hit)
    return found


def check_plain_schema(schema: pa.Schema, name: str) -> None:
    """Raise ``UnsafeParquetError`` (one line: ``name``, the column, the type) unless every column is plain Arrow."""
    found = extension_columns(schema)
    if found:
        column, extension = found[0]
        more = f" (and {len(found) - 1} more column(s))" if len(found) > 1 else ""
        raise UnsafeParquetError(
            f"{name}: column {column!r} has the Arrow extension type {extension!r}{more}; reading it could unpickle "
            "and run code stored in the file, so the file is refused (only plain Arrow columns are read)"
        )


def open_plain_parquet_file(
    source: str | os.PathLike[str], *, filesystem: Any = None, name: str | None = None
) -> pq.ParquetFile:
    """The open ``ParquetFile`` at ``source`` (on ``filesystem``, a pyarrow filesystem, when given) once its schema
    is checked; ``UnsafeParquetError`` (the file closed) when a column is extension-typed. Close it when done (it is
    a context manager). ``name`` is how messages show the file (default: ``source``; pass the URI for remote files).
    """
    pf = pq.ParquetFile(source if filesystem is None else str(source), filesystem=filesystem)
    try:
        check_plain_schema(pf.schema_arrow, name or str(source))
    except BaseException:
        pf.close()
        raise
    return pf


def parquet_refusal(source: str | os.PathLike[str], *, filesystem: Any = None, name: str | None = None) -> str | None:
    """Why the file at ``source`` must not be read (an extension-typed column, or a footer that does not parse), or
    None. Reads the footer only: for callers that treat such a file as a corrupt cache file (rebuilt, republished or
    skipped) rather than as the user's error."""
    label = name or str(source)
    try:
        open_plain_parquet_file(source, filesystem=filesystem, name=label).close()
    except UnsafeParquetError as err:
        return str(err)
    except (pa.ArrowException, OSError) as err:
        return f"{label}: not a readable Parquet file ({err})"
    return None


def parquet_schema(source: str | os.PathLike[str], *, filesystem: Any = None, name: str | None = None) -> pa.Schema:
    """The checked Arrow schema of a Parquet file (its footer only; no value is read)."""
    with open_plain_parquet_file(source, filesystem=filesystem, name=name) as pf:
        return pf.schema_arrow


def read_plain_parquet(
    source: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    schema: pa.Schema | None = None,
    filesystem: Any = None,
    name: str | None = None,
) -> pa.Table:
    """A whole Parquet file (or ``columns`` of it) as a table, refusing extension-typed columns (see the module).

    With ``schema`` the table has exactly that schema, as ``pq.read_table(schema=...)`` gives it: columns cast, a
    column the file lacks all null. Without it, a column in ``columns`` that the file lacks is ``pa.ArrowInvalid``.
    """
    if columns is not None and schema is not None:
        raise ValueError("give columns or schema, not both")
    label = name or str(source)
    with open_plain_parquet_file(source, filesystem=filesystem, name=label) as pf:
        present = set(pf.schema_arrow.names)
        if schema is None:
            missing = [c for c in columns or () if c not in present]
            if missing:
                raise pa.ArrowInvalid(f"{label}: no column(s) {missing} (columns: {sorted(present)})")
            return pf.read(columns=list(columns) if columns is not None else None)
        table = pf.read(columns=[f.name for f in schema if f.name in present])
        rows = pf.metadata.num_rows
    arrays = [table.column(f.name).cast(f.type) if f.name in present else pa.nulls(rows, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
