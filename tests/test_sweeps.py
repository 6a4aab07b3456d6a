"""Sweeps from YAML: Tune's Population Based Training and Optuna search for imitators, on a real
Dark Room teach stage (tabular Q-learning, recorded in the driver) and real Tune trials. Each
run fails if its option is ignored: PBT must change a trial's learning rate from a checkpoint
on, and the trials' learning rates must be the points Optuna's seeded sampler proposes. Bad
sweep options are refused with a one-line error naming the field. The two Tune runs are slow
(minutes on 2 cores); the rest are not."""
import pytest
import yaml
from mlflow.tracking import MlflowClient

from understudy.platform.config import ConfigError, parse_config

TEACH = {"kind": "teach", "name": "dr", "algorithm": "qlearning", "games": ["DarkRoom"], "env_steps": 200,
         "env_steps_per_iter": 20}
DISTILL = {"kind": "distill", "teacher": "dr", "game": "DarkRoom", "algorithm": "ad",
           "model": {"cnn": "grid", "stack": 1, "context": 40, "d_model": 16, "layers": 1, "heads": 2},
           "max_batches_per_epoch": 2, "cycle_data": True, "verify_shards": False, "allow_unlearned": True,
           "allow_flat_windows": True, "lr": 0.001}


def distill(**extra) -> dict:
    return {**DISTILL, **extra}


@pytest.fixture(scope="module")
def teacher(ray_session, tmp_path_factory):
    from understudy.platform import cli
    from understudy.platform.workspace import Workspace

    tmp = tmp_path_factory.mktemp("sweeps")
    (tmp / "teach.yaml").write_text(yaml.safe_dump(TEACH))
    assert cli.main(["--workspace", str(tmp / "ws"), "teach", str(tmp / "teach.yaml")]) == 0
    return Workspace.resolve(str(tmp / "ws"))


def run_distill(ws, tmp_path, cfg: dict):
    from understudy.platform import cli

    path = tmp_path / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["--workspace", str(ws.root), "distill", str(path)]) == 0
    return ws.read_stage("distill", cfg["name"]), MlflowClient(ws.tracking_uri)


@pytest.mark.slow
def test_pbt_perturbs_a_trials_learning_rate_from_a_checkpoint_on(teacher, tmp_path):
    # lr 0.001 is not in the mutation's list, so an exploited trial's lr is resampled from it:
    # the bottom half of the population must go on at 0.002 or 0.004 after epoch 1.
    manifest, client = run_distill(teacher, tmp_path, distill(
        name="pbt", epochs=3, num_samples=2, scheduler="pbt",
        pbt={"metric": "train_loss", "mode": "min", "perturbation_interval": 1, "quantile_fraction": 0.5,
             "synch": True, "mutations": {"lr": {"choice": [0.002, 0.004]}}}))
    assert len(manifest.trials) == 2 and manifest.best_by == "train_loss"
    assert len(manifest.runs) == 1  # PBT's trials copy each other: the best one is the result
    histories = [[m.value for m in sorted(client.get_metric_history(t.mlflow_run_id, "lr"), key=lambda m: m.step)]
                 for t in manifest.trials]
    assert all(h[0] == pytest.approx(0.001) and len(h) == 3 for h in histories), histories
    perturbed = [h for h in histories if any(v != pytest.approx(0.001) for v in h[1:])]
    assert perturbed, f"PBT changed no trial's learning rate: {histories}"
    assert all(v in (pytest.approx(0.001), pytest.approx(0.002), pytest.approx(0.004)) for h in histories for v in h)


@pytest.mark.slow
def test_optuna_proposes_the_points_the_trials_train_with(teacher, tmp_path):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    space = {"lr": {"loguniform": [1e-4, 1e-2]}}
    manifest, client = run_distill(teacher, tmp_path, distill(
        name="optuna", epochs=1, num_samples=3, search=space,
        searcher={"algorithm": "optuna", "seed": 3, "metric": "train_loss", "mode": "min"}))
    trained = sorted(float(client.get_run(t.mlflow_run_id).data.params["lr"]) for t in manifest.trials)
    # The same seeded sampler, asked directly: its first proposals (random startup trials) are
    # the ones the sweep must have trained with.
    searcher = OptunaSearch(metric="train_loss", mode="min", seed=3)
    searcher.set_search_properties("train_loss", "min", {"distill": {"lr": tune.loguniform(1e-4, 1e-2)}})
    proposed = sorted(searcher.suggest(f"t{i}")["distill"]["lr"] for i in range(3))
    assert trained == pytest.approx(proposed, rel=1e-9), (trained, proposed)
    assert sorted(t.point["lr"] for t in manifest.trials) == pytest.approx(proposed, rel=1e-9)


def test_seeded_basic_search_draws_the_same_points_again():
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from understudy.platform.distill import sweep_components

    def points(seed):
        cfg = parse_config(distill(name="b", num_samples=4, search={"lr": {"loguniform": [1e-4, 1e-2]}},
                                   searcher={"seed": seed}))
        search_alg, scheduler = sweep_components(cfg)
        assert isinstance(search_alg, BasicVariantGenerator) and scheduler is None
        search_alg.add_configurations({"x": {"run": lambda config: None, "num_samples": 4,
                                             "config": {"lr": tune.loguniform(1e-4, 1e-2)}}})
        return [search_alg.next_trial().config["lr"] for _ in range(4)]

    assert points(5) == points(5) and points(5) != points(6)


BAD = [
    ({"scheduler": "pbt", "epochs": 3, "num_samples": 2}, "pbt.mutations: empty"),
    ({"scheduler": "pbt", "epochs": 3, "num_samples": 2, "pbt": {"mutations": {"model.d_model": {"choice": [8]}}}},
     "pbt.mutations.model.d_model: not a key PBT can change"),
    ({"scheduler": "pbt", "epochs": 3, "num_samples": 2, "pbt": {"mutations": {"lr": {"grid": [0.1]}}}},
     "pbt.mutations.lr: grid is not a mutation domain"),
    ({"scheduler": "pbt", "epochs": 2, "num_samples": 2, "pbt": {"perturbation_interval": 2,
                                                                 "mutations": {"lr": {"choice": [0.1]}}}},
     "pbt.perturbation_interval: 2 epochs leaves no perturbation within epochs: 2"),
    ({"scheduler": "pbt", "epochs": 3, "pbt": {"mutations": {"lr": {"choice": [0.1]}}}},
     "scheduler pbt needs a population of at least 2"),
    ({"scheduler": "pbt", "epochs": 3, "seeds": [0, 1], "pbt": {"mutations": {"lr": {"choice": [0.1]}}}},
     "seeds: PBT's trials copy"),
    ({"scheduler": "pbt", "pbt": {"metric": "reward"}}, "metric 'reward' is not one of heldout_loss"),
    ({"searcher": {"algorithm": "optuna"}, "search": {"lr": {"grid": [0.1, 0.2]}}},
     "search.lr: grid is not a domain searcher.algorithm optuna samples"),
    ({"searcher": {"algorithm": "optuna"}}, "searcher.algorithm: optuna needs a search space"),
    ({"searcher": {"algorithm": "optuna"}, "search": {"lr": {"choice": [0.1]}}, "seeds": [0, 1]},
     "seeds: optuna proposes one point per trial"),
    ({"searcher": {"algorithm": "hyperopt"}}, "searcher.algorithm"),
    ({"searcher": {"algorithm": "optuna", "metric": "train_loss"}, "search": {"lr": {"choice": [0.1]}},
      "scheduler": "asha"}, "searcher.metric/mode train_loss/min and asha.metric/mode heldout_loss/min differ"),
    ({"scheduler": "asha", "data": {"heldout_episodes": 0}}, "data.heldout_episodes: 0 holds no episodes out"),
    ({"scheduler": "hyperband"}, "scheduler"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[m.split(":")[0].split(" ")[0] + str(i) for i, (_, m) in
                                                      enumerate(BAD)])
def test_bad_sweep_options_are_refused_in_one_line(extra, message):
    with pytest.raises(ConfigError) as err:
        parse_config(distill(name="bad", **extra))
    text = str(err.value)
    assert message in text and "\n" not in text.strip(), text
