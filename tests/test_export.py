"""Open histories: `understudy shards export` writes real recorded histories as Parquet with an
episode index (read back by Ray Data and Hugging Face `datasets`), as a Minari dataset (read back
by `minari.load_dataset`) and a dataset card; every value is checked against the shards. Two
real sources, both fast: Dark Room Q-learning (84x84 frames, Q-values, epsilon) and the annealed
source on MinAtar/SpaceInvaders-columns (10x10x10 frames, no policy outputs)."""
import json
import os
import tomllib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT

from understudy.algorithms.annealed_source import AnnealConfig, annealed_histories
from understudy.algorithms.darkroom_source import record_histories
from understudy.envs import minatar_columns as mc
from understudy.histories import data, export, shards
from understudy.platform import cli


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One shard root with both sources' histories, each spread over several shards."""
    root = str(tmp_path_factory.mktemp("shards"))
    darkroom = record_histories(root, [[2, 6], [7, 1]], episodes=12, shard_rows=100)
    columns = [s["run_id"] for s in annealed_histories(
        mc.GAME, [[0, 1, 2], [3, 6, 7]], AnnealConfig(episodes=5, anneal_episodes=3), seed=1, root=root,
        session="t", shard_bytes=60 * 1000, progress=None)]
    for run_id in darkroom + columns:
        assert len(shards.read_catalog(root, run_id)) >= 2
    return root, {"darkroom": darkroom, "columns": columns}


def shard_episodes(root, run_id) -> list[pa.Table]:
    """The run's episodes straight from its shards, in training order (data.index_runs)."""
    table = shards.open_run(root, run_id).to_table()
    history = data.index_runs(root, [run_id])[0]
    keys = np.asarray(table["env_runner"], np.int64) * 10**9 + np.asarray(table["episode_index"])
    out = []
    for e in history.episodes:
        rows = np.flatnonzero(keys == e.env_runner * 10**9 + e.episode_index)
        out.append(table.take(rows).sort_by("step"))
    return out


@pytest.mark.parametrize("family", ["darkroom", "columns"])
def test_parquet_export_reads_back_through_ray_data_and_datasets(recorded, family, tmp_path, ray_session):
    import datasets
    import ray.data

    root, runs = recorded
    out = tmp_path / "export"
    summary = export.export_history(root, runs[family], str(out), formats=["parquet"], block_rows=70)
    expected = {run_id: shard_episodes(root, run_id) for run_id in runs[family]}
    total = sum(len(t) for eps in expected.values() for t in eps)
    assert summary.steps == total and not (out / "minari").exists()

    episodes = pq.read_table(out / "episodes.parquet").to_pylist()
    assert [e["episode_id"] for e in episodes] == list(range(len(episodes)))
    assert len(episodes) == sum(len(eps) for eps in expected.values())
    files = {}
    for run_id, eps in expected.items():
        files[run_id] = pq.read_table(out / "steps" / f"{run_id}.parquet")
        assert files[run_id].schema.metadata[b"understudy.schema_version"] == b"2"
        mine = [e for e in episodes if e["run_id"] == run_id]
        assert [e["position"] for e in mine] == list(range(len(eps)))
        for e, want in zip(mine, eps):  # the index points at exactly the shard's episode
            got = files[run_id].slice(e["start_row"], e["length"])
            assert e["file"] == f"steps/{run_id}.parquet" and e["length"] == len(want)
            assert set(got["episode_id"].to_pylist()) == {e["episode_id"]}
            for column in ("step", "action", "reward", "policy_version", "global_step", "terminated", "truncated",
                           "epsilon", "policy_outputs", "env_runner", "episode_index"):
                assert got[column].to_pylist() == want[column].to_pylist(), column
            frames = np.frombuffer(b"".join(got["frame"].to_pylist()), np.uint8).reshape(-1, *e["frame_shape"])
            assert (frames == data.frames_of(want)).all()
            assert e["return"] == pytest.approx(float(np.sum(want["reward"].to_numpy())), abs=1e-4)
            assert e["terminated"] == want["terminated"][-1].as_py()
            assert e["truncated"] == want["truncated"][-1].as_py()

    ds = ray.data.read_parquet(str(out / "steps"))
    assert ds.count() == total
    assert set(ds.schema().names) == set(export.steps_schema((84, 84)).names)
    by_ray = ds.select_columns(["episode_id", "step", "action"]).to_pandas()
    by_ray = by_ray.sort_values(["episode_id", "step"])
    assert by_ray["action"].tolist() == [a for eps in expected.values() for t in eps for a in t["action"].to_pylist()]
    assert ray.data.read_parquet(str(out / "episodes.parquet")).count() == len(episodes)

    cache = str(tmp_path / "hf-cache")
    hf_steps = datasets.load_dataset("parquet", data_files=str(out / "steps" / "*.parquet"), split="train",
                                     cache_dir=cache)
    hf_episodes = datasets.load_dataset("parquet", data_files=str(out / "episodes.parquet"), split="train",
                                        cache_dir=cache)
    assert len(hf_steps) == total and len(hf_episodes) == len(episodes)
    assert hf_steps.features["frame"].dtype == "binary" and hf_episodes.features["return"].dtype == "float64"
    last = hf_episodes[len(hf_episodes) - 1]
    rows = hf_steps.filter(lambda r: r["episode_id"] == last["episode_id"])
    want = expected[last["run_id"]][-1]
    assert rows["reward"] == pytest.approx(want["reward"].to_pylist())
    frame = np.frombuffer(rows[0]["frame"], np.uint8).reshape(last["frame_shape"])
    assert (frame == data.frames_of(want)[0]).all()
    # The card's YAML header names the two configs: the folder itself loads as a dataset.
    by_card = datasets.load_dataset(str(out), "episodes", split="train", cache_dir=cache)
    assert by_card["return"] == pytest.approx(hf_episodes["return"])


@pytest.mark.parametrize("family", ["darkroom", "columns"])
def test_minari_export_episodes_equal_the_shards(recorded, family, tmp_path, monkeypatch):
    import minari

    root, runs = recorded
    out = tmp_path / "export"
    summary = export.export_history(root, runs[family], str(out), formats=["minari"], minari_id=f"{family}-test-v0")
    assert not (out / "steps").exists() and summary.minari_id == f"{family}-test-v0"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(out / "minari"))
    dataset = minari.load_dataset(f"{family}-test-v0")
    expected = [(run_id, t) for run_id in runs[family] for t in shard_episodes(root, run_id)]
    assert dataset.total_episodes == len(expected)
    assert dataset.total_steps == sum(len(t) for _, t in expected)
    shape = shards.run_frame_shape(root, runs[family][0])
    assert dataset.observation_space.shape == shape and dataset.observation_space.dtype == np.uint8
    metadata = list(dataset.storage.get_episode_metadata(range(len(expected))))
    for episode, meta, (run_id, want) in zip(dataset.iterate_episodes(), metadata, expected):
        assert meta["run_id"] == run_id and meta["episode_index"] == want["episode_index"][0].as_py()
        assert episode.observations.shape == (len(want) + 1, *shape)
        assert (episode.observations[:-1] == data.frames_of(want)).all()
        assert not episode.observations[-1].any()  # the unrecorded final observation
        assert episode.actions.tolist() == want["action"].to_pylist()
        assert episode.rewards == pytest.approx(want["reward"].to_pylist())
        assert episode.terminations.tolist() == want["terminated"].to_pylist()
        assert episode.truncations.tolist() == want["truncated"].to_pylist()
        assert episode.infos["policy_version"][:-1].tolist() == want["policy_version"].to_pylist()
        assert meta["return"] == pytest.approx(float(np.sum(want["reward"].to_numpy())), abs=1e-4)


def test_dataset_card_and_provenance_beside_the_data(recorded, tmp_path):
    root, runs = recorded
    run_ids = runs["darkroom"] + runs["columns"]
    out = tmp_path / "both"
    # Two frame shapes: Parquet holds them (the shape is per episode), one Minari dataset cannot.
    with pytest.raises(export.ExportError, match="one observation and one action space"):
        export.export_history(root, run_ids, str(out))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    summary = export.export_history(root, run_ids, str(out), formats=["parquet"])
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n")
    for run_id in run_ids:
        assert f"| {run_id} |" in card
        saved = json.loads((out / "runs" / f"{run_id}.json").read_text())
        assert saved["run"] == shards.read_run_metadata(root, run_id)
        assert [s["sha256"] for s in saved["shards"]] == [e["sha256"] for e in shards.read_catalog(root, run_id)]
    for name in export.steps_schema((84, 84)).names + export.EPISODE_SCHEMA.names:
        assert f"| `{name}` |" in card
    assert summary.data_version in card and "GNU GPL" in card and "(10, 10, 10)" in card
    # the version of the installed distribution (understudy-icrl), not "unknown"
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        assert f"by understudy {tomllib.load(f)['project']['version']} " in card
    shapes = {tuple(e["frame_shape"]) for e in pq.read_table(out / "episodes.parquet").to_pylist()}
    assert shapes == {(84, 84), (10, 10, 10)}


def test_export_refuses_bad_requests_and_leaves_nothing(recorded, tmp_path):
    import shutil

    root, runs = recorded
    with pytest.raises(export.ExportError, match="format: csv .*valid: parquet, minari"):
        export.export_history(root, runs["darkroom"], str(tmp_path / "a"), formats=["csv"])
    with pytest.raises(export.ExportError, match="minari id: 'no spaces' .*valid"):
        export.export_history(root, runs["darkroom"], str(tmp_path / "a"), minari_id="no spaces")
    (tmp_path / "taken").mkdir()
    with pytest.raises(export.ExportError, match="already exists"):
        export.export_history(root, runs["darkroom"], str(tmp_path / "taken"))
    # A corrupted shard stops the export before anything is written.
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    path = copy / runs["darkroom"][0] / shards.read_catalog(str(copy), runs["darkroom"][0])[0]["path"]
    raw = bytearray(path.read_bytes()); raw[len(raw) // 2] ^= 0xFF; path.write_bytes(bytes(raw))
    with pytest.raises(shards.ShardError, match="sha256 mismatch"):
        export.export_history(str(copy), runs["darkroom"], str(tmp_path / "a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "taken"]


def test_cli_exports_a_teach_stage(recorded, tmp_path, capsys):
    from understudy.platform.workspace import Workspace

    root, runs = recorded
    ws = Workspace.resolve(str(tmp_path / "ws")).ensure()
    ws.write_stage("teach", "tiny", {"name": "tiny", "shard_root": root, "algorithm": "qlearning",
                                     "runs": [{"run_id": r, "game": "DarkRoom"} for r in runs["darkroom"]]})
    out = tmp_path / "export"
    assert cli.main(["--workspace", str(ws.root), "shards", "export", "--stage", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exported 2 run(s), 24 episodes, 480 steps (parquet, minari)" in printed
    assert sorted(p.name for p in (out / "steps").iterdir()) == sorted(f"{r}.parquet" for r in runs["darkroom"])
    assert (out / "minari" / "export-v0" / "data").is_dir() and (out / "README.md").is_file()
    assert cli.main(["--workspace", str(ws.root), "shards", "export", "--stage", "none", "--out",
                     str(tmp_path / "x")]) == 2
    assert "no finished teach stage named 'none'" in capsys.readouterr().err
    assert cli.main(["--workspace", str(ws.root), "shards", "export", "--stage", "tiny"]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
