"""The data contract: how a teacher's learning history is stored. The shard schema lives here
and nowhere else (documented in docs/shards.md).

Layout under a shard root (a local path or any URI `pyarrow.fs` understands, e.g. s3://b/p):

    <root>/<run_id>/run.json                 run metadata (game, algorithm, seed, protocol, ROM hash)
    <root>/<run_id>/shards/<name>.arrow      Arrow IPC files, zstd-compressed, whole episodes only
    <root>/<run_id>/catalog/<name>.json      one entry per complete shard: rows, episodes, sha256

A shard is written under a temporary name and renamed when complete; its catalog entry is
written (also via a temporary name) only after that. Readers find shards through the catalog
alone, so they never see a partial shard.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from understudy.envs import FRAME_SHAPE
from understudy.histories import settings

# Version 2: the frame's shape is the env family's (84x84 for ALE and Dark Room, 10x10x10 for
# MinAtar), named in the frame field's metadata and in run.json; version 1 shards (84x84, no
# shape named) read unchanged.
SCHEMA_VERSION = 2
FRAME_SHAPE_KEY = b"understudy.frame_shape"


def shard_schema(frame_shape: tuple[int, ...] = FRAME_SHAPE) -> pa.Schema:
    """One row per agent step: the observation the action was chosen on (its newest frame
    only; stacks are rebuilt on read), the action, and what the env returned for it."""
    frame_bytes = int(np.prod(frame_shape))
    return pa.schema([
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("game", pa.string(), nullable=False),
        pa.field("algorithm", pa.string(), nullable=False),
        pa.field("seed", pa.int32(), nullable=False),
        pa.field("env_runner", pa.int16(), nullable=False),
        pa.field("episode_index", pa.int64(), nullable=False),  # per env runner, completion order
        pa.field("step", pa.int32(), nullable=False),  # step within the episode, from 0
        pa.field("global_step", pa.int64(), nullable=False),  # env steps taken by this env runner
        pa.field("policy_version", pa.int64(), nullable=False),  # learner update behind the action
        pa.field("frame", pa.binary(frame_bytes), nullable=False,  # newest uint8 frame
                 metadata={FRAME_SHAPE_KEY: ",".join(map(str, frame_shape)).encode()}),
        pa.field("action", pa.int16(), nullable=False),
        pa.field("reward", pa.float32(), nullable=False),  # raw, unclipped
        pa.field("terminated", pa.bool_(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("lives", pa.int16(), nullable=False),
        pa.field("epsilon", pa.float32(), nullable=True),  # behaviour epsilon, where there is one
        pa.field("policy_outputs", pa.list_(pa.float32()), nullable=True),  # logits or Q-values
    ], metadata={"understudy.schema_version": str(SCHEMA_VERSION)})


SHARD_SCHEMA = shard_schema()  # ALE's and Dark Room's 84x84 frames


def frame_shape_of(schema: pa.Schema) -> tuple[int, ...]:
    """The frame shape a shard's schema names (version 1 named none: 84x84)."""
    meta = schema.field("frame").metadata or {}
    return tuple(int(x) for x in meta[FRAME_SHAPE_KEY].decode().split(",")) if FRAME_SHAPE_KEY in meta else FRAME_SHAPE


PER_STEP_COLUMNS = ("step", "global_step", "policy_version", "frame", "action", "reward",
                    "terminated", "truncated", "lives", "epsilon", "policy_outputs")


class ShardError(RuntimeError):
    """A shard root, run or shard that cannot be read or written as the contract says."""


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI such as s3://bucket/prefix."""
    if "://" not in root:
        root = os.path.abspath(root)
        return pafs.LocalFileSystem(), root
    return pafs.FileSystem.from_uri(root)


# Object storage that stops answering (a restart, a network cut) is waited for
# UNDERSTUDY_STORAGE_RETRY_S (histories.settings) before a write fails; a local disk's errors
# (full, read-only) are final at once.


@dataclass
class _Outage:
    """This process's view of object storage being away: one line when it goes, one when it is
    back, not one per failed attempt."""
    since: float | None = None
    retried: int = 0


_outage = _Outage()


def _write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """`_write_once`, retried with backoff while remote object storage does not answer (up to
    UNDERSTUDY_STORAGE_RETRY_S). A retry writes a new temporary name and renames it over `path`, so a write
    that half went through before the outage is replaced whole, never doubled."""
    if fs.type_name == "local":
        return _write_once(fs, path, data)
    retry_s = settings.STORAGE_RETRY_S.get()
    deadline, wait = time.monotonic() + retry_s, 1.0
    while True:
        try:
            _write_once(fs, path, data)
        except OSError as err:
            if time.monotonic() + wait > deadline:
                raise
            if _outage.since is None:
                _outage.since = time.monotonic()
                print(f"[shards] object storage unreachable writing {path} ({str(err).splitlines()[0][:160]}); "
                      f"retrying for up to {retry_s:.0f}s, nothing is dropped", flush=True)
            _outage.retried += 1
            time.sleep(wait)
            wait = min(2 * wait, 15.0)
            continue
        if _outage.since is not None:
            print(f"[shards] object storage is back after {time.monotonic() - _outage.since:.0f}s; "
                  f"{_outage.retried} write attempt(s) retried, every write went through", flush=True)
            _outage.since, _outage.retried = None, 0
        return


def _write_once(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write to a temporary name beside `path`, then rename: a reader sees all or nothing."""
    directory, name = path.rsplit("/", 1)
    tmp = f"{directory}/.tmp-{uuid.uuid4().hex[:8]}-{name}"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except Exception:
            pass
        raise


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


@dataclass
class Episode:
    """One complete episode, ready to be written: per-step columns plus its summary."""
    env_runner: int
    episode_index: int
    columns: dict  # PER_STEP_COLUMNS -> numpy arrays of equal length (see episodes_to_table)
    env_return: float  # the return the env itself counted (RecordEpisodeStatistics)

    @property
    def steps(self) -> int:
        return len(self.columns["action"])


@dataclass
class ShardWriter:
    """Buffers whole episodes of one env runner and writes them as shards of about `max_rows`."""
    root: str
    run_id: str
    static: dict  # game, algorithm, seed: the same for every row of the run
    env_runner: int
    max_rows: int = 20_000
    _pending: list = field(default_factory=list)
    _pending_rows: int = 0
    _next_shard: int = 0

    def __post_init__(self):
        self.fs, self.base = filesystem(self.root)
        self.run_dir = f"{self.base}/{self.run_id}"
        for sub in ("shards", "catalog"):
            self.fs.create_dir(f"{self.run_dir}/{sub}", recursive=True)
        # Continue numbering after every shard this runner wrote before (a restarted runner or
        # a resumed run), rewound ones included, so no name is ever reused.
        mine = [e["shard"] for e in read_catalog(self.root, self.run_id, include_rewound=True)
                if e["env_runner"] == self.env_runner]
        self._next_shard = 1 + max((int(s.rsplit("-", 1)[1]) for s in mine), default=-1)

    def add(self, episode: Episode) -> None:
        self._pending.append(episode)
        self._pending_rows += episode.steps
        if self._pending_rows >= self.max_rows:
            self.flush()

    def flush(self) -> dict | None:
        """Write the buffered episodes as one shard plus its catalog entry; return the entry."""
        if not self._pending:
            return None
        episodes, self._pending, self._pending_rows = self._pending, [], 0
        table = episodes_to_table(episodes, run_id=self.run_id, **self.static)
        name = f"r{self.env_runner:03d}-{self._next_shard:06d}"
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression="zstd")
        with pa.ipc.new_file(sink, table.schema, options=options) as writer:
            writer.write_table(table, max_chunksize=4096)
        data = sink.getvalue().to_pybytes()
        path = f"{self.run_dir}/shards/{name}.arrow"
        try:
            _write_atomic(self.fs, path, data)
        except OSError as err:
            raise ShardError(f"cannot write shard {path}: {err}") from err
        entry = {
            "schema_version": SCHEMA_VERSION,
            "shard": name,
            "path": f"shards/{name}.arrow",
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "rows": table.num_rows,
            "env_runner": self.env_runner,
            "created": time.time(),
            "episodes": [
                {"episode_index": e.episode_index, "steps": e.steps, "return": e.env_return,
                 "first_policy_version": int(e.columns["policy_version"][0]),
                 "last_policy_version": int(e.columns["policy_version"][-1]),
                 "first_global_step": int(e.columns["global_step"][0]),
                 "last_global_step": int(e.columns["global_step"][-1])}
                for e in episodes
            ],
        }
        try:
            _write_atomic(self.fs, f"{self.run_dir}/catalog/{name}.json",
                          json.dumps(entry).encode())
        except OSError as err:
            # The shard is there but uncataloged, so no reader will ever see it.
            raise ShardError(f"cannot write catalog entry for {path}: {err}") from err
        self._next_shard += 1
        return entry


def episodes_to_table(episodes: list[Episode], *, run_id: str, game: str, algorithm: str,
                      seed: int) -> pa.Table:
    """Episodes (numpy columns; `frame` is (T, *frame shape) uint8, `policy_outputs` (T, A) or
    None, `epsilon` (T,) or None) -> one table in `shard_schema(frame shape)`, built without
    per-row Python."""
    n = sum(e.steps for e in episodes)
    frame_shape = tuple(np.asarray(episodes[0].columns["frame"]).shape[1:])
    schema = shard_schema(frame_shape)
    frame_bytes = int(np.prod(frame_shape))

    def cat(key, dtype):
        return np.concatenate([np.asarray(e.columns[key], dtype) for e in episodes])

    def nullable(key, make):
        parts = [e.columns[key] for e in episodes]
        if all(p is None for p in parts):
            return pa.nulls(n, schema.field(key).type)
        mask = np.concatenate([np.full(e.steps, p is None) for e, p in zip(episodes, parts)])
        return make(parts, mask, [e.steps for e in episodes])

    def epsilon(values, mask, sizes):
        data = np.concatenate([v if v is not None else np.zeros(s, np.float32)
                               for v, s in zip(values, sizes)]).astype(np.float32)
        return pa.array(data, pa.float32(), mask=mask)

    def outputs(values, mask, sizes):
        width = next(v.shape[1] for v in values if v is not None)
        flat = np.concatenate([np.asarray(v, np.float32).reshape(s, width) if v is not None
                               else np.zeros((s, width), np.float32)
                               for v, s in zip(values, sizes)])
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
        arr = pa.ListArray.from_arrays(offsets, pa.array(flat.ravel(), pa.float32()),
                                       mask=pa.array(mask))
        return arr

    frames = np.ascontiguousarray(np.concatenate([np.asarray(e.columns["frame"], np.uint8)
                                                  .reshape(e.steps, frame_bytes) for e in episodes]))
    arrays = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "game": pa.array([game] * n, pa.string()),
        "algorithm": pa.array([algorithm] * n, pa.string()),
        "seed": pa.array(np.full(n, seed, np.int32)),
        "env_runner": pa.array(np.concatenate([np.full(e.steps, e.env_runner, np.int16) for e in episodes])),
        "episode_index": pa.array(np.concatenate([np.full(e.steps, e.episode_index, np.int64) for e in episodes])),
        "step": pa.array(cat("step", np.int32)),
        "global_step": pa.array(cat("global_step", np.int64)),
        "policy_version": pa.array(cat("policy_version", np.int64)),
        "frame": pa.FixedSizeBinaryArray.from_buffers(pa.binary(frame_bytes), n,
                                                      [None, pa.py_buffer(frames)]),
        "action": pa.array(cat("action", np.int16)),
        "reward": pa.array(cat("reward", np.float32)),
        "terminated": pa.array(cat("terminated", bool)),
        "truncated": pa.array(cat("truncated", bool)),
        "lives": pa.array(cat("lives", np.int16)),
        "epsilon": nullable("epsilon", epsilon),
        "policy_outputs": nullable("policy_outputs", outputs),
    }
    return pa.table([arrays[f.name] for f in schema], schema=schema)


# ---- run metadata and the catalog ---------------------------------------------------------

def check_writable(root: str) -> None:
    """Fail before any work starts if shards cannot be written under `root`."""
    try:
        fs, base = filesystem(root)
        fs.create_dir(base, recursive=True)
        probe = f"{base}/.understudy-write-probe-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except (OSError, ValueError) as err:
        raise ShardError(f"shard root {root!r} is not writable: {err}. Choose another with "
                         "--shard-root or UNDERSTUDY_SHARD_ROOT, or fix its permissions") from None


def write_run_metadata(root: str, run_id: str, metadata: dict) -> None:
    fs, base = filesystem(root)
    fs.create_dir(f"{base}/{run_id}", recursive=True)
    _write_atomic(fs, f"{base}/{run_id}/run.json",
                  json.dumps({"run_id": run_id, "schema_version": SCHEMA_VERSION, **metadata},
                             indent=2, sort_keys=True).encode())


def read_run_metadata(root: str, run_id: str) -> dict:
    fs, base = filesystem(root)
    try:
        return json.loads(_read_bytes(fs, f"{base}/{run_id}/run.json"))
    except FileNotFoundError as err:
        raise ShardError(f"run {run_id!r} has no run.json under shard root {root!r}") from err


def write_run_verdict(root: str, run_id: str, verdict: dict) -> None:
    """Whether the teacher that played this history learned (platform.teach.learning_verdict)."""
    fs, base = filesystem(root)
    _write_atomic(fs, f"{base}/{run_id}/verdict.json", json.dumps(verdict, indent=2, sort_keys=True).encode())


def read_run_verdict(root: str, run_id: str) -> dict | None:
    fs, base = filesystem(root)
    try:
        return json.loads(_read_bytes(fs, f"{base}/{run_id}/verdict.json"))
    except FileNotFoundError:
        return None


def list_runs(root: str) -> list[str]:
    fs, base = filesystem(root)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise ShardError(f"shard root {root!r} does not exist")
    entries = fs.get_file_info(pafs.FileSelector(base))
    return sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory
                  and fs.get_file_info(f"{e.path}/run.json").type == pafs.FileType.File)


def read_catalog(root: str, run_id: str, include_rewound: bool = False) -> list[dict]:
    """The complete shards of a run, in shard-name order. Temporary files are ignored, and so
    are shards rewound by a resume (unless asked for)."""
    fs, base = filesystem(root)
    folders = ["catalog"] + (["rewound"] if include_rewound else [])
    paths = []
    for folder in folders:
        selector = pafs.FileSelector(f"{base}/{run_id}/{folder}", allow_not_found=True)
        paths += [e.path for e in fs.get_file_info(selector)
                  if e.base_name.endswith(".json") and not e.base_name.startswith(".")]
    entries = [json.loads(_read_bytes(fs, p)) for p in paths]
    return sorted(entries, key=lambda e: e["shard"])


def rewind_run(root: str, run_id: str, keep: set[str]) -> list[str]:
    """Take every shard not in `keep` out of the catalog (its entry moves to rewound/), e.g.
    the history recorded after the checkpoint a run resumes from. Returns what was rewound."""
    fs, base = filesystem(root)
    fs.create_dir(f"{base}/{run_id}/rewound", recursive=True)
    rewound = []
    for entry in read_catalog(root, run_id):
        if entry["shard"] not in keep:
            fs.move(f"{base}/{run_id}/catalog/{entry['shard']}.json",
                    f"{base}/{run_id}/rewound/{entry['shard']}.json")
            rewound.append(entry["shard"])
    return rewound


def shard_paths(root: str, run_id: str) -> list[str]:
    fs, base = filesystem(root)
    return [f"{base}/{run_id}/{e['path']}" for e in read_catalog(root, run_id)]


def run_frame_shape(root: str, run_id: str) -> tuple[int, ...]:
    """The shape of a run's frames, as its run.json names it (runs before version 2: 84x84)."""
    shape = read_run_metadata(root, run_id).get("frame_shape")
    return tuple(shape) if shape else FRAME_SHAPE


def open_run(root: str, run_id: str, exclude: frozenset[str] = frozenset()) -> pads.Dataset:
    """A run's learning history as a pyarrow dataset over its cataloged shards (less the
    shard paths in `exclude`, e.g. ones found corrupted)."""
    fs, _ = filesystem(root)
    paths = [p for p in shard_paths(root, run_id) if p not in exclude]
    if not paths:
        raise ShardError(f"run {run_id!r} under {root!r} has no cataloged shards")
    return pads.dataset(paths, format="ipc", filesystem=fs, schema=shard_schema(run_frame_shape(root, run_id)))


def find_runs(root: str, games: list[str] | None = None, algorithm: str | None = None) -> list[str]:
    """Run ids under a shard root, optionally only those of some games or one algorithm."""
    found = []
    for run_id in list_runs(root):
        meta = read_run_metadata(root, run_id)
        if (games is None or meta["game"] in games) and (algorithm is None or meta["algorithm"] == algorithm):
            found.append(run_id)
    return found


def open_runs(root: str, run_ids: list[str]) -> pads.Dataset:
    """Several runs (e.g. a suite's) as one pyarrow dataset."""
    fs, _ = filesystem(root)
    paths = [p for run_id in run_ids for p in shard_paths(root, run_id)]
    if not paths:
        raise ShardError(f"runs {run_ids} under {root!r} have no cataloged shards")
    shapes = {run_frame_shape(root, run_id) for run_id in run_ids}
    if len(shapes) > 1:
        raise ShardError(f"runs {run_ids} under {root!r} have different frame shapes {sorted(shapes)}; "
                         "open runs of one env family together")
    return pads.dataset(paths, format="ipc", filesystem=fs, schema=shard_schema(shapes.pop()))


def ray_dataset(root: str, run_ids: list[str], columns: list[str] | None = None):
    """The same shards as a Ray Data dataset, read by Ray Data's file-based reader
    (`ray.data.read_datasource` over the cataloged Arrow IPC files: one read task per shard at
    most, one block per record batch), only `columns` decompressed."""
    import ray.data

    from understudy.histories.arrow_datasource import ArrowIPCDatasource

    paths = [p for run_id in run_ids for p in shard_paths(root, run_id)]
    if not paths:
        raise ShardError(f"runs {run_ids} under {root!r} have no cataloged shards")
    shapes = {run_frame_shape(root, run_id) for run_id in run_ids}
    if len(shapes) > 1 and (columns is None or "frame" in columns):
        raise ShardError(f"runs {run_ids} under {root!r} have different frame shapes {sorted(shapes)}; "
                         "read runs of one env family together, or leave out the frame column")
    fs, _ = filesystem(root)
    return ray.data.read_datasource(ArrowIPCDatasource(paths, columns=columns, filesystem=fs))


def data_version(root: str, run_ids: list[str], exclude: set[str] = frozenset()) -> str:
    """A short content hash of exactly which shards a consumer read (less `exclude`d paths)."""
    fs, base = filesystem(root)
    h = hashlib.sha256()
    for run_id in sorted(run_ids):
        for entry in read_catalog(root, run_id):
            if f"{base}/{run_id}/{entry['path']}" in exclude:
                continue
            h.update(f"{run_id}/{entry['shard']}:{entry['sha256']}\n".encode())
    return h.hexdigest()[:16]


def corrupted_shards(root: str, run_ids: list[str]) -> dict[str, str]:
    """Shard path -> what is wrong with it, for every cataloged shard that fails verification."""
    return {line.split(": ", 1)[0]: line.split(": ", 1)[1]
            for run_id in run_ids for line in verify_run(root, run_id)}


def verify_run(root: str, run_id: str) -> list[str]:
    """Problems found, one line each as 'path: problem' (empty: every cataloged shard is intact)."""
    fs, base = filesystem(root)
    problems = []
    catalog = read_catalog(root, run_id)
    if not catalog:
        files = fs.get_file_info(pafs.FileSelector(f"{base}/{run_id}/shards", allow_not_found=True))
        orphans = [f for f in files if f.base_name.endswith(".arrow") and not f.base_name.startswith(".")]
        if orphans:  # readers find shards only through the catalog: these are invisible
            problems.append(f"{base}/{run_id}/catalog: missing, yet {len(orphans)} shard file(s) "
                            "exist; no reader will see them (restore catalog/ or re-record the run)")
    for entry in catalog:
        path = f"{base}/{run_id}/{entry['path']}"
        try:
            data = _read_bytes(fs, path)
        except FileNotFoundError:
            problems.append(f"{path}: cataloged but missing")
            continue
        if len(data) != entry["bytes"]:
            problems.append(f"{path}: {len(data)} bytes, catalog says {entry['bytes']}")
        elif hashlib.sha256(data).hexdigest() != entry["sha256"]:
            problems.append(f"{path}: sha256 mismatch (corrupted)")
    return problems


def episode_returns(root: str, run_id: str) -> list[dict]:
    """Per-episode summaries from the catalog, in (env runner, episode index) order."""
    eps = [dict(e, env_runner=entry["env_runner"]) for entry in read_catalog(root, run_id)
           for e in entry["episodes"]]
    return sorted(eps, key=lambda e: (e["env_runner"], e["episode_index"]))
