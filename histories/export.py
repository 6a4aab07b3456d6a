"""Recorded learning histories in open formats, for readers outside Understudy.

`export_history` copies runs of a shard root into one folder:

    <out>/README.md                 the dataset card: what the data is, its fields, provenance, licence
    <out>/episodes.parquet          the episode index: one row per episode (run, game, file, start row,
                                    length, return, policy versions, ...), in training order
    <out>/steps/<run_id>.parquet    one row per step, the shard's columns plus `episode_id`, in training order
    <out>/runs/<run_id>.json        the run's run.json, verdict.json and the digests of the shards read
    <out>/minari/<dataset id>/      the same episodes as a Minari dataset (MINARI_DATASETS_PATH=<out>/minari)

Parquet is read by `ray.data.read_parquet`, Hugging Face `datasets.load_dataset("parquet", ...)`,
pandas, polars, DuckDB. The shards stay the system of record; an export is a copy. Nothing
half-written is left: the folder is built under a temporary name beside `out` and renamed
when complete, and `out` is never written over.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from understudy.envs import family_of
from understudy.histories import data, shards

EXPORT_FORMATS = ("parquet", "minari")
PARQUET_COMPRESSION = "zstd"

# What each column of the exported steps means; types and shapes are taken from the data.
STEP_FIELDS = {
    "episode_id": "the episode's row in episodes.parquet (unique in the export)",
    "run_id": "the learning history (run) the step belongs to",
    "game": "the game's canonical name (Breakout, MinAtar/Breakout, MinAtar/SpaceInvaders-columns, DarkRoom)",
    "algorithm": "the source that played: ppo, appo, dqn (RLlib teachers), qlearning (Dark Room), annealed",
    "seed": "the source's seed",
    "env_runner": "RLlib env runner index (0 for single-runner sources)",
    "episode_index": "the episode's number within its env runner, in the order episodes finished",
    "step": "step within the episode, from 0",
    "global_step": "env steps its env runner took before this one",
    "policy_version": "which version of the behaviour policy chose the action",
    "frame": "the newest frame of the observation the action was chosen on: the raw bytes of a C-order "
             "uint8 array of the run's frame shape (episodes.parquet `frame_shape`)",
    "action": "the action taken, an index into the env's action set",
    "reward": "the raw, unclipped reward the env returned for the action",
    "terminated": "true on the last step of an episode that ended in a terminal state",
    "truncated": "true on the last step of an episode cut by a time limit",
    "lives": "ALE's lives when the action was chosen (0 in other families)",
    "epsilon": "the behaviour epsilon the action was drawn with (null: the source has none)",
    "policy_outputs": "the behaviour policy's logits or Q-values, one per action (null: none recorded)",
}
EPISODE_FIELDS = {
    "episode_id": "0.. in this file's order: runs in the order exported, each run's episodes in training order",
    "run_id": "the learning history (run)",
    "game": "the game's canonical name",
    "algorithm": "the source",
    "seed": "the source's seed",
    "env_runner": "the env runner that played it",
    "episode_index": "its number within its env runner",
    "position": "its place in its run's history, in training order, from 0",
    "file": "the steps file holding it, relative to the export folder",
    "start_row": "its first row in that file",
    "length": "its number of steps (rows)",
    "return": "its raw return as the source counted it",
    "terminated": "it ended in a terminal state",
    "truncated": "it was cut by a time limit",
    "first_policy_version": "policy version of its first action",
    "last_policy_version": "policy version of its last action (training order sorts by it)",
    "first_global_step": "global_step of its first step",
    "last_global_step": "global_step of its last step",
    "frame_shape": "the shape of its frames: (84, 84) for ALE and Dark Room, (10, 10, 10) for MinAtar",
    "num_actions": "the size of its action set",
}
EPISODE_SCHEMA = pa.schema([
    ("episode_id", pa.int64()), ("run_id", pa.string()), ("game", pa.string()), ("algorithm", pa.string()),
    ("seed", pa.int32()), ("env_runner", pa.int16()), ("episode_index", pa.int64()), ("position", pa.int64()),
    ("file", pa.string()), ("start_row", pa.int64()), ("length", pa.int64()), ("return", pa.float64()),
    ("terminated", pa.bool_()), ("truncated", pa.bool_()),
    ("first_policy_version", pa.int64()), ("last_policy_version", pa.int64()),
    ("first_global_step", pa.int64()), ("last_global_step", pa.int64()),
    ("frame_shape", pa.list_(pa.int32())), ("num_actions", pa.int32()),
])
# Per-step values a Minari episode carries in its infos: infos[t] describes the step taken on
# observations[t]; the last entry (the unrecorded final observation's) is -1 (epsilon: NaN).
MINARI_INFOS = ("policy_version", "global_step", "lives", "epsilon")

THIRD_PARTY_TERMS = {
    "ale": "ALE games: ale-py (pinned 0.12.1) is under the GNU GPL version 2 (its metadata states "
           "`License-Expression: GPL-2.0-only`); the Atari 2600 ROMs ship inside the ale-py package, whose "
           "metadata names no separate licence for them. These frames are of those games.",
    "minatar": "MinAtar games: MinAtar (pinned 1.0.15) states `License: GPL` in its metadata; its upstream "
               "repository (github.com/kenjyoung/MinAtar) is under the GNU GPL version 3. These frames are of "
               "those games.",
    "minatar_columns": "MinAtar/SpaceInvaders-columns runs MinAtar's Space Invaders code (GNU GPL, see MinAtar).",
    "darkroom": "Dark Room is this project's own environment (envs/darkroom.py), under the MIT licence.",
}


class ExportError(ValueError):
    """An export that cannot be made as asked (the folder exists, a format or id is invalid,
    runs that one Minari dataset cannot hold)."""


@dataclass(frozen=True)
class RunExport:
    run_id: str
    meta: dict
    frame_shape: tuple[int, ...]
    num_actions: int
    episodes: int
    steps: int
    returns: list[float] = field(repr=False)


@dataclass(frozen=True)
class ExportSummary:
    out: str
    root: str
    formats: tuple[str, ...]
    runs: list[RunExport]
    data_version: str
    minari_id: str | None
    created: str

    @property
    def episodes(self) -> int:
        return sum(r.episodes for r in self.runs)

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.runs)


def check_formats(formats) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip() for f in formats if f.strip()))
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad or not formats:
        raise ExportError(f"format: {', '.join(bad) or '(none)'} is not an export format; valid: "
                          f"{', '.join(EXPORT_FORMATS)} (comma-separated)")
    return formats


def default_minari_id(out: str) -> str:
    """`<folder name>-v0`, with what Minari ids may not hold replaced by '-'."""
    name = re.sub(r"[^-_\w]+", "-", Path(out).name).strip("-_") or "understudy"
    return f"{name}-v0"


def check_minari_id(dataset_id: str) -> str:
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except ValueError:
        raise ExportError(f"minari id: {dataset_id!r} is not a Minari dataset id; valid: "
                          "[namespace/]name-v<version>, e.g. darkroom-qlearning-v0") from None
    return dataset_id


def export_history(root: str, run_ids: list[str], out: str, formats=EXPORT_FORMATS,
                   minari_id: str | None = None, block_rows: int = 10_000) -> ExportSummary:
    """Export runs of shard root `root` to the new folder `out` (a local path) in `formats`.
    Every cataloged shard is verified first (sha256); a corrupted one stops the export."""
    formats = check_formats(formats)
    if "://" in out:
        raise ExportError(f"out: {out!r} is a URI; an export is written to a local folder (copy it to "
                          "object storage afterwards)")
    target = Path(out).resolve()
    if target.exists():
        raise ExportError(f"out: {target} already exists; an export is never written over another, "
                          "choose a new folder")
    if not target.parent.is_dir():
        raise ExportError(f"out: {target.parent} is not a folder; create it first")
    if not run_ids:
        raise ExportError(f"no runs to export under shard root {root!r}")
    if "minari" in formats:
        minari_id = check_minari_id(minari_id or default_minari_id(str(target)))
    else:
        minari_id = None
    problems = [line for run_id in run_ids for line in shards.verify_run(root, run_id)]
    if problems:
        raise shards.ShardError(f"{len(problems)} shard problem(s), nothing exported: {problems[0]}"
                                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                                + "; run `understudy shards verify`")
    histories = data.index_runs(root, run_ids)
    runs_info = {h.run_id: (shards.run_frame_shape(root, h.run_id),
                            data.num_actions_of([h], data.StepTransforms())) for h in histories}
    if "minari" in formats:
        spaces = {(shape, n) for shape, n in runs_info.values()}
        if len(spaces) > 1:
            shown = ", ".join(f"{r}: frames {s}, {n} actions" for r, (s, n) in runs_info.items())
            raise ExportError(f"a Minari dataset holds one observation and one action space, and these runs "
                              f"differ ({shown}); export them separately or with --format parquet")

    tmp = target.parent / f".tmp-{uuid.uuid4().hex[:8]}-{target.name}"
    tmp.mkdir()
    try:
        summary = _write(root, histories, runs_info, tmp, target, formats, minari_id, block_rows)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _write(root, histories, runs_info, tmp: Path, target: Path, formats, minari_id, block_rows) -> ExportSummary:
    reader = data.ShardReader(root, columns=shards.SHARD_SCHEMA.names)
    minari_storage = None
    if "minari" in formats:
        shape, num_actions = next(iter(runs_info.values()))
        minari_storage = _new_minari_storage(tmp / "minari" / minari_id / "data", shape, num_actions)
    (tmp / "runs").mkdir()
    if "parquet" in formats:
        (tmp / "steps").mkdir()
    episode_rows: list[dict] = []
    exported = []
    for h in histories:
        frame_shape, num_actions = runs_info[h.run_id]
        name = f"steps/{h.run_id}.parquet"
        writer = None
        if "parquet" in formats:
            writer = pq.ParquetWriter(tmp / name, steps_schema(frame_shape), compression=PARQUET_COMPRESSION)
        first_id, row = len(episode_rows), 0
        try:
            for block in _blocks(list(h.episodes), block_rows):
                table = data.read_episodes(reader, h, block)
                ids = np.arange(len(episode_rows), len(episode_rows) + len(block))
                ends = np.cumsum([e.steps for e in block]) - 1
                terminated = table["terminated"].to_numpy()[ends]
                truncated = table["truncated"].to_numpy()[ends]
                for e, episode_id, term, trunc in zip(block, ids, terminated, truncated):
                    episode_rows.append({
                        "episode_id": int(episode_id), "run_id": h.run_id, "game": h.game,
                        "algorithm": h.meta["algorithm"], "seed": int(h.meta["seed"]),
                        "env_runner": e.env_runner, "episode_index": e.episode_index,
                        "position": int(episode_id) - first_id, "file": name, "start_row": row, "length": e.steps,
                        "return": e.ret, "terminated": bool(term), "truncated": bool(trunc),
                        "first_policy_version": e.first_policy_version, "last_policy_version": e.last_policy_version,
                        "first_global_step": None, "last_global_step": None,
                        "frame_shape": list(frame_shape), "num_actions": num_actions})
                    row += e.steps
                starts = np.r_[0, ends[:-1] + 1]
                global_step = table["global_step"].to_numpy()
                for i, episode_id in enumerate(ids):
                    episode_rows[episode_id]["first_global_step"] = int(global_step[starts[i]])
                    episode_rows[episode_id]["last_global_step"] = int(global_step[ends[i]])
                episode_id_column = pa.array(np.repeat(ids, [e.steps for e in block]), pa.int64())
                if writer is not None:
                    steps = table.add_column(0, "episode_id", episode_id_column)
                    writer.write_table(_to_steps_schema(steps, frame_shape), row_group_size=block_rows)
                if minari_storage is not None:
                    _add_minari_episodes(minari_storage, h, block, ids, table, frame_shape)
        finally:
            if writer is not None:
                writer.close()
        _write_json(tmp / "runs" / f"{h.run_id}.json", {
            "run": h.meta, "verdict": shards.read_run_verdict(root, h.run_id),
            "shards": [{k: entry[k] for k in ("shard", "sha256", "bytes", "rows")}
                       for entry in shards.read_catalog(root, h.run_id)]})
        exported.append(RunExport(h.run_id, h.meta, frame_shape, num_actions, len(h.episodes), h.steps,
                                  [e.ret for e in h.episodes]))
    if "parquet" in formats:
        pq.write_table(pa.Table.from_pylist(episode_rows, schema=EPISODE_SCHEMA), tmp / "episodes.parquet",
                       compression=PARQUET_COMPRESSION)
    summary = ExportSummary(
        out=str(target), root=root, formats=tuple(formats), runs=exported,
        data_version=shards.data_version(root, [h.run_id for h in histories]), minari_id=minari_id,
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if minari_storage is not None:
        minari_storage.update_metadata({
            "dataset_id": minari_id, "minari_version": _minari_version(),
            "algorithm_name": ", ".join(sorted({r.meta["algorithm"] for r in exported})),
            "description": f"Understudy learning histories ({len(exported)} runs, {summary.episodes} episodes) "
                           f"exported from {root}; see README.md beside the minari folder."})
    (tmp / "README.md").write_text(dataset_card(summary))
    return summary


def steps_schema(frame_shape: tuple[int, ...]) -> pa.Schema:
    """The shard schema with `episode_id` first and the frame as plain binary (readers that know
    no fixed-size binary read it; its shape is in the schema metadata and in episodes.parquet)."""
    source = shards.shard_schema(frame_shape)
    fields = [pa.field("episode_id", pa.int64(), nullable=False)]
    for f in source:
        fields.append(pa.field("frame", pa.binary(), nullable=False) if f.name == "frame" else f)
    return pa.schema(fields, metadata={"understudy.schema_version": str(shards.SCHEMA_VERSION),
                                       "understudy.frame_shape": ",".join(map(str, frame_shape))})


def _to_steps_schema(table: pa.Table, frame_shape) -> pa.Table:
    i = table.schema.get_field_index("frame")
    table = table.set_column(i, "frame", pc.cast(table["frame"], pa.binary()))
    return table.cast(steps_schema(frame_shape))


def _blocks(episodes, block_rows: int):
    """Consecutive episodes in groups of about `block_rows` rows (at least one episode each)."""
    block, rows = [], 0
    for e in episodes:
        if block and rows + e.steps > block_rows:
            yield block
            block, rows = [], 0
        block.append(e)
        rows += e.steps
    if block:
        yield block


# ---- Minari ------------------------------------------------------------------------------------

def _minari_version() -> str:
    import minari

    return minari.__version__


def _new_minari_storage(path: Path, frame_shape, num_actions: int):
    import gymnasium as gym
    from minari.dataset.minari_storage import MinariStorage

    path.mkdir(parents=True)
    space = gym.spaces.Box(0, 255, tuple(frame_shape), np.uint8)
    # Arrow storage, lossless: Minari's default JPEG-encodes image observations.
    return MinariStorage.new(path, observation_space=space, action_space=gym.spaces.Discrete(num_actions),
                             data_format="arrow", jpeg_encoding=False)


def _add_minari_episodes(storage, h: data.HistoryIndex, episodes, ids, table: pa.Table, frame_shape) -> None:
    from minari.data_collector.episode_buffer import EpisodeBuffer

    frames = data.frames_of(table)
    if frames.shape[1:] != tuple(frame_shape):
        raise shards.ShardError(f"run {h.run_id}: frames of shape {frames.shape[1:]}, run.json says {frame_shape}")
    columns = {k: table[k].to_numpy(zero_copy_only=False) for k in
               ("action", "reward", "terminated", "truncated", "policy_version", "global_step", "lives")}
    epsilon = table["epsilon"].fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float32)
    buffers, metadata, start = [], [], 0
    for e, episode_id in zip(episodes, ids):
        rows = slice(start, start + e.steps)
        start += e.steps
        # The shards hold no observation after an episode's last action: Minari's last one is zeros.
        observations = np.concatenate([frames[rows], np.zeros((1, *frame_shape), np.uint8)])
        # Plain lists: Minari 0.5.4 cannot read back a 1-D numpy info array (empty shape metadata).
        infos = {k: np.r_[columns[k][rows].astype(np.int64), -1].tolist() for k in MINARI_INFOS[:3]}
        infos["epsilon"] = np.r_[epsilon[rows], np.float32(np.nan)].astype(np.float32).tolist()
        buffers.append(EpisodeBuffer(
            id=int(episode_id), observations=observations, actions=columns["action"][rows].astype(np.int64),
            rewards=columns["reward"][rows].astype(np.float32), terminations=columns["terminated"][rows],
            truncations=columns["truncated"][rows], infos=infos))
        metadata.append({"run_id": h.run_id, "game": h.game, "algorithm": h.meta["algorithm"],
                         "seed": int(h.meta["seed"]), "env_runner": e.env_runner, "episode_index": e.episode_index,
                         "return": e.ret, "first_policy_version": e.first_policy_version,
                         "last_policy_version": e.last_policy_version})
    storage.update_episodes(buffers)
    storage.update_episode_metadata(metadata, [int(i) for i in ids])


# ---- the dataset card --------------------------------------------------------------------------

def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True))


def _mean(values) -> str:
    return f"{float(np.mean(values)):.4g}" if len(values) else "-"


def dataset_card(summary: ExportSummary) -> str:
    """README.md for the export folder: a Hugging Face-style dataset card (YAML header with the
    licence and the two Parquet configs), then what the data is, its fields, how to read it,
    where it came from and under what terms."""
    try:
        version = importlib.metadata.version("understudy-icrl")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    name = Path(summary.out).name
    parquet = "parquet" in summary.formats
    families = sorted({family_of(r.meta["game"]).name for r in summary.runs})
    shapes = sorted({r.frame_shape for r in summary.runs})
    lines = ["---", "license: mit", f"pretty_name: Understudy learning histories ({name})",
             "tags:", "- reinforcement-learning", "- offline-reinforcement-learning", "- learning-histories"]
    if parquet:
        lines += ["configs:", "- config_name: steps", "  data_files: steps/*.parquet", "  default: true",
                  "- config_name: episodes", "  data_files: episodes.parquet"]
    lines += ["---", "", f"# Learning histories: {name}", "",
              "Every step reinforcement-learning sources took while they learned (the annealed source: while its "
              "noise fell), from the first step to the last, one row per step: the frame the action was chosen on, "
              "the action, the raw reward, how the episode ended and what the behaviour policy was. One run is one "
              "learning history. Recorded by Understudy (docs/shards.md in its repository describes the source "
              "format, schema version 2).", "",
              f"Exported {summary.created} by understudy {version} from shard root `{summary.root}`: "
              f"{len(summary.runs)} run(s), {summary.episodes} episodes, {summary.steps} steps. Data version "
              f"`{summary.data_version}` (a digest of exactly the shards read, as `understudy distill` logs it).", "",
              "## Runs", "",
              "| run | game | source | seed | episodes | steps | frame shape | actions | mean return, first tenth "
              "| mean return, last tenth |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.runs:
        tenth = max(1, len(r.returns) // 10)
        lines.append(f"| {r.run_id} | {r.meta['game']} | {r.meta['algorithm']} | {r.meta['seed']} | {r.episodes} "
                     f"| {r.steps} | {r.frame_shape} | {r.num_actions} | {_mean(r.returns[:tenth])} "
                     f"| {_mean(r.returns[-tenth:])} |")
    lines += ["", "## Files", ""]
    if parquet:
        lines += ["- `steps/<run_id>.parquet`: one row per step, each run's episodes in training order (by the policy "
                  "version of their last action, then env runner, then episode index: the order they finished).",
                  "- `episodes.parquet`: the episode index, one row per episode; `file` and `start_row` say where its "
                  f"steps are. Parquet files are {PARQUET_COMPRESSION}-compressed."]
    lines.append("- `runs/<run_id>.json`: the run's `run.json` (game, source, seed, protocol, env versions, task), "
                 "its `verdict.json` where a teach stage wrote one, and the sha256 of every shard read.")
    if summary.minari_id:
        lines.append(f"- `minari/{summary.minari_id}/`: the same episodes as a Minari dataset (Arrow storage, "
                     "lossless), in the order of `episodes.parquet`.")
    if parquet:
        lines += ["", "## Fields: steps", "", "| column | type | meaning |", "|---|---|---|"]
        schema = steps_schema(shapes[0])
        for f in schema:
            kind = str(f.type) + ("" if f.nullable else ", not null")
            lines.append(f"| `{f.name}` | {kind} | {STEP_FIELDS[f.name]} |")
        lines += ["", "A frame is `numpy.frombuffer(frame, numpy.uint8).reshape(frame_shape)`: "
                  + "; ".join(f"{_family_frames(s)}" for s in shapes) + ". Where a frame is 2-D (ALE, Dark Room) "
                  "the policy saw a stack of the last k frames of the same episode, oldest first on the last axis, "
                  "zeros before the episode's start; only the newest frame is stored. The observation after an "
                  "episode's last action is not recorded.", "",
                  "## Fields: episodes", "", "| column | type | meaning |", "|---|---|---|"]
        for f in EPISODE_SCHEMA:
            lines.append(f"| `{f.name}` | {f.type} | {EPISODE_FIELDS[f.name]} |")
    if summary.minari_id:
        shape, actions = summary.runs[0].frame_shape, summary.runs[0].num_actions
        lines += ["", "## Minari", "",
                  f"Dataset id `{summary.minari_id}`: observation space `Box(0, 255, {shape}, uint8)` (the stored "
                  f"frame), action space `Discrete({actions})`. An episode of T steps has T + 1 observations; the "
                  "last is all zeros, since the shards do not record the observation after the last action. "
                  f"`infos` holds {', '.join(MINARI_INFOS)} per step (the last entry -1, epsilon NaN; epsilon NaN "
                  "where the source has none); each episode's metadata holds its run, env runner, episode index, "
                  "return and policy versions. `policy_outputs` is in the Parquet files only."]
    lines += ["", "## Reading it", "", "```python"]
    if parquet:
        lines += ["import ray.data", f"steps = ray.data.read_parquet('{name}/steps')",
                  "import datasets",
                  f"episodes = datasets.load_dataset('parquet', data_files='{name}/episodes.parquet', split='train')",
                  f"steps = datasets.load_dataset('parquet', data_files='{name}/steps/*.parquet', split='train')"]
    if summary.minari_id:
        lines += ["import os, minari", f"os.environ['MINARI_DATASETS_PATH'] = '{name}/minari'",
                  f"dataset = minari.load_dataset('{summary.minari_id}')",
                  "for episode in dataset.iterate_episodes(): ..."]
    lines += ["```", "", "## Provenance", ""]
    lines += [_PROVENANCE[a] for a in sorted({r.meta["algorithm"] for r in summary.runs}) if a in _PROVENANCE]
    lines += ["", "Each run's `run.json` (in `runs/`) names its environment's identity: ALE's ale-py version, ROM id "
              "and ROM sha256; MinAtar's protocol settings; Dark Room's goal split version. No run records the "
              "version of Understudy's code that recorded it.", "",
              "Known limitations: episodes still running when a runner stopped were dropped whole, so `global_step` "
              "can have gaps; `epsilon` and `policy_outputs` are not uniform across sources; `lives` means something "
              "in ALE only; annealed histories are synthetic (their returns improve because the noise falls).", "",
              "## Licence", "",
              "The data format and Understudy's own work are under the MIT licence (Copyright (c) 2026 The "
              "Understudy authors; LICENSE in its repository). The frames are rendered from environments that come "
              "under their own terms:", ""]
    lines += [f"- {THIRD_PARTY_TERMS[f]}" for f in families if f in THIRD_PARTY_TERMS]
    if set(families) - {"darkroom"}:
        lines += ["", "Check those terms before redistributing ALE or MinAtar histories."]
    lines.append("")
    return "\n".join(lines)


def _family_frames(shape) -> str:
    if len(shape) == 3:
        return f"{shape}: (row, column, channel), the whole MinAtar observation, channels last"
    return f"{shape}: a grayscale image, row 0 at the top"


_PROVENANCE = {
    "ppo": "- `ppo`: RLlib PPO (new API stack) learning the game; every training episode of every env runner recorded.",
    "appo": "- `appo`: RLlib APPO learning the game; every training episode of every env runner recorded.",
    "dqn": "- `dqn`: RLlib DQN learning the game; every training episode of every env runner recorded.",
    "qlearning": "- `qlearning`: tabular Q-learning on Dark Room, one history per goal (optimistic init, Dyna "
                 "planning sweeps); every episode is 20 steps.",
    "annealed": "- `annealed`: AD-epsilon (Zisman et al., ICML 2024): a task-aware expert whose actions are replaced "
                "by uniformly random ones with a probability that falls over the history; no learning.",
}
