"""bsuite scores from real bsuite CSV logs, written by the env adapter under scripted policies."""

import csv

import numpy as np
import pytest

from recall2imagine import bsuite_score, sweep
from recall2imagine.envs.bsuite import BSuite


def play(run_dir, bsuite_id, policy, episodes):
    """Plays `episodes` episodes with `policy(first_obs, obs) -> action` and bsuite's CSV logger on."""
    with BSuite(bsuite_id, bsuite_logdir=run_dir / "bsuite") as env:
        for _ in range(episodes):
            first = obs = env.reset()
            while not obs["is_last"]:
                obs = env.step(policy(first["vector"], obs["vector"]))


def recall(first, obs):  # memory_len: observation = [time, query, context bits]; act the queried bit
    return int(first[2 + int(obs[1])] > 0)


def forget(first, obs):
    return 1 - recall(first, obs)


def chain(action):  # discounting_chain: the first action picks the chain
    return lambda first, obs: action


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """A sweep-shaped folder of bsuite logs: `<root>/<task>/seed<k>/bsuite/*.csv` plus config.yaml."""
    root = tmp_path_factory.mktemp("bsuite_logs")
    plan = {  # bsuite id: (policy of seed 0, policy of seed 1, episodes)
        "memory_len/0": (recall, recall, 40),
        "memory_len/2": (recall, recall, 40),
        "memory_len/3": (recall, forget, 40),
        "memory_len/4": (forget, forget, 40),
        # the bonus chain of discounting_chain/2 is action 2 (mapping_seed % 5)
        "discounting_chain/2": (chain(2), chain(0), 12),
    }
    runs = []
    for bsuite_id, (*policies, episodes) in plan.items():
        for seed, policy in enumerate(policies):
            d = sweep.run_dir(root, f"bsuite:{bsuite_id}", seed)
            play(d, bsuite_id, policy, episodes)
            (d / "config.yaml").write_text(f"task: bsuite:{bsuite_id}\nseed: {seed}\n")
            runs.append((seed, d))
    return root, runs


def test_scores_match_bsuite_analysis(logs):
    from bsuite.experiments.discounting_chain import analysis as dc_analysis
    from bsuite.experiments.memory_len import analysis as ml_analysis
    from bsuite.logging import csv_load

    root, runs = logs
    result = bsuite_score.score(runs)
    assert result["error"] is None
    exps = {e["experiment"]: e for e in result["experiments"]}
    assert set(exps) == {"memory_len", "discounting_chain"}

    # independent path: bsuite's loader and each experiment's score function, seed by seed
    for name, analysis in (("memory_len", ml_analysis), ("discounting_chain", dc_analysis)):
        direct = []
        for seed in (0, 1):
            dirs = [str(d / "bsuite") for s, d in runs if s == seed and f"_{name}_" in d.parent.name]
            df, _ = csv_load.load_bsuite(dirs)
            direct.append(analysis.score(df))
        assert exps[name]["score"] == pytest.approx(np.mean(direct))
        assert exps[name]["score_min"] == pytest.approx(min(direct))
        assert exps[name]["partial"] and not exps[name]["finished"]

    # scripted extremes: recall learns every length, forget none; bonus chain scores 1, another 0
    assert exps["memory_len"]["score"] == pytest.approx(np.mean([3 / 4, 2 / 4]))
    assert exps["discounting_chain"]["score"] == pytest.approx(0.5)
    dc = exps["discounting_chain"]
    assert (dc["score_min"], dc["score_max"]) == pytest.approx((0, 1))
    assert exps["memory_len"]["settings"] == 4 and exps["memory_len"]["settings_total"] == 23

    settings = {s["bsuite_id"]: s for s in result["settings"]}
    assert [settings[f"memory_len/{i}"]["memory_length"] for i in (0, 2, 3, 4)] == [1, 3, 4, 5]
    for i in (0, 2):
        s = settings[f"memory_len/{i}"]
        assert (s["success_final"], s["success_cumulative"], s["setting_score"]) == (1, 1, 1) and s["solved"]
    s = settings["memory_len/4"]
    assert (s["success_final"], s["success_cumulative"], s["setting_score"], s["solved"]) == (0, 0, 0, False)
    s = settings["memory_len/3"]
    assert (s["success_final"], s["setting_score"], s["solved"], s["seeds"]) == (0.5, 0.5, False, 2)
    assert exps["memory_len"]["largest_solved"] == 3
    assert settings["discounting_chain/2"]["setting_score"] == pytest.approx(0.5)
    assert "success_final" not in settings["discounting_chain/2"]

    md = "\n".join(bsuite_score.markdown(result))
    assert "| memory_len | 0.625 [0.500-0.750] | 2 | 4 of 23 (partial) | no | 3 |" in md
    assert "| memory_len/2 | memory_length=3 | 2 | 40 | 1.000 | 1.000 | 1.000 | yes |" in md


def test_sweep_summary_and_cli(logs, tmp_path, capsys):
    root, runs = logs
    assert sweep.main(["--summarize", str(root)]) == 0
    with open(root / "summary_bsuite.csv") as f:
        rows = list(csv.DictReader(f))
    exp = {r["experiment"]: r for r in rows if r["level"] == "experiment"}
    assert float(exp["memory_len"]["score"]) == pytest.approx(0.625)
    assert exp["memory_len"]["largest_solved"] == "3"
    with open(root / "summary.csv") as f:
        per_run = list(csv.DictReader(f))
    assert len(per_run) == len(runs)
    assert {r["task"] for r in per_run} >= {"bsuite:memory_len/3", "bsuite:discounting_chain/2"}
    md = (root / "summary.md").read_text()
    assert "## bsuite score" in md and "largest memory length solved" in md
    png = root / "summary_memory.png"  # success vs memory length
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    # the module's own CLI on two run dirs
    capsys.readouterr()
    assert (
        bsuite_score.main(
            [
                str(root / "bsuite_memory_len_3" / "seed0"),
                str(root / "bsuite_memory_len_3" / "seed1" / "bsuite"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| memory_len/3 | memory_length=4 | 2 |" in out
    # no memory experiment among the runs: no plot
    assert not bsuite_score.plot_memory(dict(settings=[], runs=[]), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
