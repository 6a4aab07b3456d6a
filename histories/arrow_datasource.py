"""Ray Data's own file-based reader for shard files (Arrow IPC, the format `ShardWriter`
writes), so `shards.ray_dataset` reads through Ray Data's standard path (`read_datasource`:
path resolution, one read task per file, retries, any `pyarrow.fs` filesystem) instead of a
hand-built `from_items` + `map_batches`. Ray Data has no Arrow IPC reader of its own; this is
the extension its ORC reader shows: a `FileBasedDatasource` on a random-access file. Its two
methods are Ray Data's private hooks, listed (and checked against the installed Ray) in
algorithms/rllib_compat.py with every private Ray name the project uses.
Imported only where Ray Data is wanted (it imports Ray)."""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa
from ray.data.datasource.file_based_datasource import FileBasedDatasource


class ArrowIPCDatasource(FileBasedDatasource):
    """Arrow IPC files, one record batch of a file per block, decompressing only `columns`."""

    _FILE_EXTENSIONS = ["arrow"]

    def __init__(self, paths, columns: list[str] | None = None, **file_based_datasource_kwargs):
        super().__init__(paths, file_extensions=self._FILE_EXTENSIONS, **file_based_datasource_kwargs)
        self._columns = list(columns) if columns else None

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        reader = pa.ipc.open_file(f)
        options = None
        if self._columns:
            missing = [c for c in self._columns if c not in reader.schema.names]
            if missing:
                raise ValueError(f"{path}: no column(s) {missing}; valid: {', '.join(reader.schema.names)}")
            indices = [reader.schema.get_field_index(c) for c in self._columns]
            options = pa.ipc.IpcReadOptions(included_fields=indices)
            reader = pa.ipc.open_file(f, options=options)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            if batch.num_rows:
                # included_fields keeps the file's field order; give the order asked for.
                yield pa.Table.from_batches([batch]).select(self._columns) if self._columns else \
                    pa.Table.from_batches([batch])

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        # An IPC file's footer is at its end: reading it needs a seekable file, not a stream.
        return filesystem.open_input_file(path)
