"""The shard contract: schema, atomic writes, catalog, checksums, stacks rebuilt on read."""
import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from understudy.envs import AtariProtocol, make_atari_env, newest_frame
from understudy.histories import shards
from understudy.histories.data import load_history

STATIC = {"game": "Breakout", "algorithm": "random", "seed": 0}


def play_random(game="Breakout", episodes=2, max_steps=60, seed=0):
    """Real ALE episodes as shard Episodes, with the stacks the policy saw."""
    env = make_atari_env(game, AtariProtocol(full_action_space=True), max_episode_steps=max_steps)
    env.action_space.seed(seed)
    out = []
    global_step = 0
    for e in range(episodes):
        obs, info = env.reset(seed=seed + e)
        cols = {k: [] for k in shards.PER_STEP_COLUMNS}
        seen = []
        done, t = False, 0
        while not done:
            action = env.action_space.sample()
            seen.append(obs.copy())
            cols["step"].append(t); cols["global_step"].append(global_step)
            cols["policy_version"].append(e); cols["frame"].append(newest_frame(obs))
            cols["action"].append(int(action)); cols["lives"].append(info["lives"])
            cols["epsilon"].append(1.0); cols["policy_outputs"].append([0.5] * 3)
            obs, reward, term, trunc, info = env.step(action)
            cols["reward"].append(float(reward)); cols["terminated"].append(bool(term))
            cols["truncated"].append(bool(trunc))
            done, t, global_step = term or trunc, t + 1, global_step + 1
        columns = {k: np.asarray(v) for k, v in cols.items()}
        out.append((shards.Episode(0, e, columns, float(info["episode"]["r"])), np.stack(seen)))
    env.close()
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shards"))
    played = play_random(episodes=3)
    writer = shards.ShardWriter(root, "run-a", STATIC, env_runner=0, max_rows=10**9)
    shards.write_run_metadata(root, "run-a", dict(STATIC))
    writer.add(played[0][0]); writer.add(played[1][0])
    writer.flush()
    writer.add(played[2][0])
    writer.flush()
    return root, played


def test_catalog_lists_complete_shards_with_checksums(recorded):
    root, played = recorded
    catalog = shards.read_catalog(root, "run-a")
    assert [e["shard"] for e in catalog] == ["r000-000000", "r000-000001"]
    assert sum(e["rows"] for e in catalog) == sum(ep.steps for ep, _ in played)
    assert shards.verify_run(root, "run-a") == []
    assert shards.list_runs(root) == ["run-a"]


def test_shards_read_back_with_plain_pyarrow(recorded):
    root, played = recorded
    path = os.path.join(root, "run-a", "shards", "r000-000000.arrow")
    table = pa.ipc.open_file(path).read_all()
    assert table.schema.equals(shards.SHARD_SCHEMA)
    assert table.schema.metadata[b"understudy.schema_version"] == str(shards.SCHEMA_VERSION).encode()
    assert table.num_rows == played[0][0].steps + played[1][0].steps
    assert {len(f) for f in table["frame"].to_pylist()} == {84 * 84}


def test_stacks_rebuilt_on_read_equal_what_the_policy_saw(recorded):
    root, played = recorded
    history = load_history(root, ["run-a"])
    seen = np.concatenate([stacks for _, stacks in played])
    assert history.stacks(np.arange(len(history))).shape == seen.shape
    np.testing.assert_array_equal(history.stacks(np.arange(len(history))), seen)
    assert history.num_episodes == 3


def test_expert_only_keeps_the_last_episodes(recorded):
    root, played = recorded
    history = load_history(root, ["run-a"], last_episodes=1)
    assert len(history) == played[2][0].steps
    np.testing.assert_array_equal(history.stacks(np.arange(len(history))), played[2][1])


def test_env_return_matches_rewards(recorded):
    root, _ = recorded
    table = shards.open_run(root, "run-a").to_table()
    for e in shards.episode_returns(root, "run-a"):
        mask = np.asarray(table["episode_index"]) == e["episode_index"]
        assert np.isclose(np.asarray(table["reward"])[mask].sum(), e["return"])


def test_catalog_ignores_temporary_and_uncataloged_files(recorded, tmp_path):
    root, _ = recorded
    run = os.path.join(root, "run-a")
    open(os.path.join(run, "catalog", ".tmp-1234-r000-000009.json"), "w").write("{partial")
    open(os.path.join(run, "shards", ".tmp-1234-r000-000009.arrow"), "wb").write(b"partial")
    open(os.path.join(run, "shards", "r000-000009.arrow"), "wb").write(b"not cataloged")
    assert len(shards.read_catalog(root, "run-a")) == 2
    assert len(shards.open_run(root, "run-a").to_table()) > 0


def test_verify_catches_a_flipped_byte(tmp_path):
    root = str(tmp_path)
    writer = shards.ShardWriter(root, "run-b", STATIC, env_runner=0)
    writer.add(play_random(episodes=1, max_steps=20)[0][0])
    entry = writer.flush()
    path = os.path.join(root, "run-b", entry["path"])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    problems = shards.verify_run(root, "run-b")
    assert len(problems) == 1 and "r000-000000.arrow" in problems[0] and "sha256" in problems[0]


def test_writer_resumes_numbering(tmp_path):
    root = str(tmp_path)
    ep = play_random(episodes=1, max_steps=10)[0][0]
    w = shards.ShardWriter(root, "run-c", STATIC, env_runner=2)
    w.add(ep); w.flush()
    w2 = shards.ShardWriter(root, "run-c", STATIC, env_runner=2)
    w2.add(ep); w2.flush()
    assert [e["shard"] for e in shards.read_catalog(root, "run-c")] == ["r002-000000", "r002-000001"]


def test_unwritable_storage_fails_clearly_and_catalogs_nothing(tmp_path):
    root = tmp_path / "store"
    w = shards.ShardWriter(str(root), "run-d", STATIC, env_runner=0)
    w.add(play_random(episodes=1, max_steps=10)[0][0])
    first = w.flush()
    w.add(play_random(episodes=1, max_steps=10, seed=1)[0][0])
    # The shard folder is replaced by a file: no user, root included, can write into it.
    shards_dir = root / "run-d" / "shards"
    kept = (shards_dir / "r000-000000.arrow").read_bytes()
    for f in shards_dir.iterdir():
        f.unlink()
    shards_dir.rmdir()
    shards_dir.write_text("in the way")
    with pytest.raises(shards.ShardError, match="cannot write shard .*r000-000001"):
        w.flush()
    assert [e["shard"] for e in shards.read_catalog(str(root), "run-d")] == [first["shard"]]
    shards_dir.unlink(); shards_dir.mkdir()
    (shards_dir / "r000-000000.arrow").write_bytes(kept)
    assert shards.verify_run(str(root), "run-d") == []  # the earlier shard is intact


def test_runs_open_as_one_dataset_and_through_ray_data(recorded, ray_session):
    root, played = recorded
    assert shards.find_runs(root, games=["Breakout"]) == ["run-a"]
    assert shards.find_runs(root, games=["Pong"]) == []
    assert shards.open_runs(root, ["run-a"]).count_rows() == sum(ep.steps for ep, _ in played)
    ds = shards.ray_dataset(root, ["run-a"], columns=["episode_index", "reward"])
    assert ds.count() == sum(ep.steps for ep, _ in played)
    assert ds.schema().names == ["episode_index", "reward"]
    # Ray Data's file-based reader: one input file per shard, the same rows as pyarrow reads.
    assert len(ds.input_files()) == len(shards.read_catalog(root, "run-a"))
    rows = sorted(zip(*ds.to_pandas().to_dict("list").values()))
    table = shards.open_run(root, "run-a").to_table(columns=["episode_index", "reward"])
    assert rows == sorted(zip(table["episode_index"].to_pylist(), table["reward"].to_pylist()))
    frames = shards.ray_dataset(root, ["run-a"], columns=["frame"]).to_arrow_refs()
    import ray

    got = sorted(f for t in ray.get(frames) for f in t["frame"].to_pylist())
    assert got == sorted(shards.open_run(root, "run-a").to_table(columns=["frame"])["frame"].to_pylist())


def test_shards_cli_lists_shows_and_verifies(recorded, tmp_path):
    import shutil
    import subprocess
    import sys

    root = tmp_path / "copy"
    shutil.copytree(recorded[0], root)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "understudy.platform.cli", "shards", *args,
                               "--root", str(root)], capture_output=True, text=True, timeout=60)

    ls = cli("ls")
    assert ls.returncode == 0 and "run-a\t2 shards\t3 episodes" in ls.stdout
    show = cli("show", "run-a")
    assert show.returncode == 0 and "random on Breakout" in show.stdout and "return curve" in show.stdout
    assert cli("verify").returncode == 0
    path = root / "run-a" / "shards" / "r000-000001.arrow"
    data = bytearray(path.read_bytes()); data[100] ^= 0xFF; path.write_bytes(bytes(data))
    bad = cli("verify")
    assert bad.returncode == 1 and "r000-000001.arrow" in bad.stdout and "sha256" in bad.stdout


def minatar_episodes(episodes=2, seed=0):
    """Real MinAtar Breakout episodes as shard Episodes: whole (10, 10, 10) frames."""
    from understudy.envs.minatar import MinAtarVectorEnv

    env = MinAtarVectorEnv("MinAtar/Breakout", 1, max_episode_steps=40)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for e in range(episodes):
        cols = {k: [] for k in shards.PER_STEP_COLUMNS}
        done, t = False, 0
        while not done:
            action = int(rng.integers(6))
            cols["step"].append(t); cols["global_step"].append(t); cols["policy_version"].append(0)
            cols["frame"].append(obs[0]); cols["action"].append(action); cols["lives"].append(0)
            cols["epsilon"].append(1.0); cols["policy_outputs"].append([0.0] * 6)
            obs, reward, term, trunc, _ = env.step(np.array([action]))
            cols["reward"].append(float(reward[0])); cols["terminated"].append(bool(term[0]))
            cols["truncated"].append(bool(trunc[0]))
            done, t = bool(term[0] or trunc[0]), t + 1
        obs, *_ = env.step(np.array([0]))  # NEXT_STEP autoreset: the next episode's first frame
        columns = {k: np.asarray(v) for k, v in cols.items()}
        out.append(shards.Episode(0, e, columns, float(columns["reward"].sum())))
    return out


def test_schema_2_carries_each_familys_frame_shape_and_schema_1_still_reads(tmp_path):
    """MinAtar frames (10, 10, 10) go through the same writer and reader as Atari's 84x84; a
    version-1 shard (84x84, no shape named) reads as before."""
    root = str(tmp_path)
    played = minatar_episodes()
    shards.write_run_metadata(root, "mini", {**STATIC, "game": "MinAtar/Breakout", "frame_shape": [10, 10, 10]})
    writer = shards.ShardWriter(root, "mini", {**STATIC, "game": "MinAtar/Breakout"}, env_runner=0)
    for ep in played:
        writer.add(ep)
    writer.flush()
    table = shards.open_run(root, "mini").to_table()
    assert shards.frame_shape_of(table.schema) == (10, 10, 10) == shards.run_frame_shape(root, "mini")
    history = load_history(root, ["mini"])
    expected = np.concatenate([ep.columns["frame"] for ep in played])
    assert history.frames.shape == expected.shape and (history.frames == expected).all()
    assert shards.verify_run(root, "mini") == []

    # version 1: the same Atari shard without the frame shape in its schema
    atari = play_random(episodes=1)[0][0]
    shards.write_run_metadata(root, "old", dict(STATIC))
    old = shards.ShardWriter(root, "old", STATIC, env_runner=0)
    old.add(atari)
    entry = old.flush()
    path = os.path.join(root, "old", entry["path"])
    table = pa.ipc.open_file(path).read_all()
    v1 = table.schema.set(table.schema.get_field_index("frame"), table.schema.field("frame").remove_metadata())
    v1 = v1.with_metadata({b"understudy.schema_version": b"1"})
    with pa.ipc.new_file(path, v1) as out:
        out.write_table(table.cast(v1))
    catalog = os.path.join(root, "old", "catalog", entry["shard"] + ".json")
    data = open(path, "rb").read()
    json.dump({**entry, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, open(catalog, "w"))
    assert shards.verify_run(root, "old") == []
    frames = load_history(root, ["old"]).frames
    assert frames.shape == (atari.steps, 84, 84) and (frames == atari.columns["frame"]).all()
    with pytest.raises(shards.ShardError, match="frame shapes"):
        shards.open_runs(root, ["mini", "old"])
