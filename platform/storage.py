"""Checkpoints on local disk or object storage, named by one string: a path or a URI.

Tune writes checkpoints through pyarrow.fs, so with `--storage s3://bucket/prefix` a result's
checkpoint is a bucket path plus a filesystem object. Manifests and MLflow tags record it as a
URI (s3://bucket/...), and whoever loads it gets a local copy first.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager

import pyarrow.fs as pafs

from understudy.histories.shards import filesystem

# pyarrow filesystem type -> URI scheme (pyarrow's GCS filesystem is "gcs", its URIs gs://).
_SCHEMES = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}


def checkpoint_uri(checkpoint) -> str:
    """A ray.tune.Checkpoint's location as one string: its path if local, else a URI."""
    kind = checkpoint.filesystem.type_name
    if kind == "local":
        return checkpoint.path
    if kind not in _SCHEMES:
        raise ValueError(f"checkpoint on a {kind!r} filesystem: understudy can name only local, "
                         f"{', '.join(_SCHEMES)} checkpoints")
    return f"{_SCHEMES[kind]}://{checkpoint.path}"


@contextmanager
def local_copy(location: str | None):
    """Yield a local folder with the contents of `location` (returned as is when local or None);
    a remote copy is deleted on exit."""
    if location is None or "://" not in location:
        yield location
        return
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"checkpoint {location} does not exist")
    with tempfile.TemporaryDirectory(prefix="understudy-ckpt-") as tmp:
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp
