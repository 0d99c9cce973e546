import numpy as np

from recall2imagine.driver import Driver
from recall2imagine.envs.base import ActSpace, Env


class FakeEnv(Env):
    """Episodes of fixed length; obs counts steps; reward = action + 1."""

    def __init__(self, length, ident):
        self.length = length
        self.ident = ident
        self.obs_space = {'vector': ((2,), np.dtype(np.float32))}
        self.act_space = ActSpace(True, 3)
        self.t = None
        self.received = []

    def reset(self):
        self.t = 0
        return self._pack({'vector': self._obs()}, 0.0, True, False, False)

    def step(self, action):
        assert isinstance(action, int)
        assert self.t is not None and self.t < self.length, 'stepped after end'
        self.received.append((self.t, action))
        self.t += 1
        last = self.t == self.length
        return self._pack({'vector': self._obs()}, action + 1.0, False, last, last)

    def _obs(self):
        return np.array([self.ident, self.t], np.float32)


def policy(obs, state):
    """Picks action = (obs step counter) % 3, one-hot; counts calls in state."""
    state = 0 if state is None else state
    idx = obs['vector'][:, 1].astype(int) % 3
    act = np.eye(3, dtype=np.float32)[idx]
    return {'action': act, 'log_entropy': np.zeros(len(idx))}, state + 1


def test_driver_two_envs():
    envs = [FakeEnv(3, 0), FakeEnv(5, 1)]
    driver = Driver(envs)
    transitions, episodes = [], []
    driver(policy, steps=24, on_step=lambda tr, w: transitions.append((tr, w)), on_episode=episodes.append)
    assert len(transitions) == 12  # 24 env steps / 2 envs
    assert driver._state == 12
    for tr, workers in transitions:
        assert workers.tolist() == [0, 1]
        assert set(tr) == {'vector', 'reward', 'is_first', 'is_last', 'is_terminal', 'action'}
        assert tr['action'].shape == (2, 3) and tr['reward'].dtype == np.float32
        # The stored action is the one chosen at this observation.
        np.testing.assert_array_equal(tr['action'].argmax(-1), tr['vector'][:, 1].astype(int) % 3)

    first = np.array([tr['is_first'] for tr, _ in transitions])
    last = np.array([tr['is_last'] for tr, _ in transitions])
    terminal = np.array([tr['is_terminal'] for tr, _ in transitions])
    # Env 0: episodes of 3 steps -> 4 obs per episode (first .. last).
    assert first[:, 0].tolist() == [1, 0, 0, 0] * 3
    assert last[:, 0].tolist() == [0, 0, 0, 1] * 3
    # Env 1: 6 obs per episode.
    assert first[:, 1].tolist() == [1, 0, 0, 0, 0, 0] * 2
    assert last[:, 1].tolist() == [0, 0, 0, 0, 0, 1] * 2
    np.testing.assert_array_equal(terminal, last)

    # Rewards follow the actions sent: reward(t+1) = action(t) + 1 = t % 3 + 1.
    assert [tr['reward'][0] for tr, _ in transitions[:4]] == [0, 1, 2, 3]
    by_worker = {0: [], 1: []}
    for ep in episodes:
        by_worker[ep['worker']].append((ep['score'], ep['length']))
    assert by_worker[0] == [(6.0, 3)] * 3
    assert by_worker[1] == [(1 + 2 + 3 + 1 + 2.0, 5)] * 2
    # The action at the last obs was never executed: each env saw only
    # in-episode actions, and the env was reset after each episode.
    assert envs[0].received == [(0, 0), (1, 1), (2, 2)] * 3


def test_driver_carries_state_and_partial_episodes():
    envs = [FakeEnv(4, 0), FakeEnv(2, 1)]
    driver = Driver(envs)
    episodes = []
    driver(policy, steps=4, on_episode=episodes.append)
    driver(policy, steps=4, on_episode=episodes.append)
    assert driver._state == 4
    # Env 1 (length 2) finished after obs 0,1,2; env 0 not yet.
    assert [e['worker'] for e in episodes] == [1]
    driver(policy, steps=2, on_episode=episodes.append)
    assert sorted(e['worker'] for e in episodes) == [0, 1]
    assert episodes[-1] == {'score': 1 + 2 + 3 + 1.0, 'length': 4, 'worker': 0}
    driver.reset_policy_state()  # a new policy: episodes in flight continue
    assert driver._state is None
    seen = []
    driver(policy, steps=2, on_step=lambda tr, w: seen.append(tr['is_first']))
    assert seen[0].tolist() == [True, False]  # env 0 had just ended its episode, env 1 goes on
    driver.reset_state()  # everything: every env restarts
    assert driver._state is None
    seen = []
    driver(policy, steps=2, on_step=lambda tr, w: seen.append(tr['is_first']))
    assert seen[0].tolist() == [True, True]


def test_driver_continuous_actions():
    class Cont(FakeEnv):
        def __init__(self):
            super().__init__(3, 0)
            self.act_space = ActSpace(False, 2, (-1.0, -1.0), (1.0, 1.0))

        def step(self, action):
            assert isinstance(action, np.ndarray) and action.shape == (2,)
            return super().step(int(action[0] > 0))

    driver = Driver([Cont()])
    driver(lambda obs, s: ({'action': np.ones((1, 2), np.float32)}, s), steps=3)
