"""Atari 2600 games through ale-py (``atari:<game>``, e.g. ``atari:pong``; the ``atari`` extra).

DreamerV3's preprocessing: each agent step repeats the action 4 times and returns the pixel-wise
maximum of the last two frames, resized to ``size`` (64x64) in colour; a reset plays a random number
(0-30) of no-op steps; sticky actions (the previous action repeats with probability 0.25) unless
``sticky=False`` (Atari 100k); the minimal action set; episodes end at game over (terminal) or after
108,000 frames (27,000 agent steps, a truncation). Lives are not used.
"""

from __future__ import annotations

import numpy as np

from recall2imagine.envs.base import ActSpace, Env
from recall2imagine.envs.gym import _resize

REPEAT, NOOPS, MAX_FRAMES = 4, 30, 108_000


def _ale():
    try:
        import ale_py
        import gymnasium
    except ImportError:
        raise ValueError('Atari tasks need the atari extra: pip install -e ".[atari]"') from None
    gymnasium.register_envs(ale_py)
    return gymnasium


def _env_id(game: str) -> str:
    """'pong' -> 'ALE/Pong-v5', 'space_invaders' -> 'ALE/SpaceInvaders-v5'."""
    return 'ALE/' + ''.join(part.capitalize() for part in game.split('_')) + '-v5'


def atari_ids() -> list[str]:
    """Game names (snake case) of every ALE game ale-py registers."""
    import re

    gymnasium = _ale()
    names = [k[4:-3] for k in gymnasium.registry if k.startswith('ALE/') and k.endswith('-v5')]
    return sorted(re.sub(r'(?<!^)(?=[A-Z])', '_', n).lower() for n in names)


class Atari(Env):
    """One Atari game behind the common ``Env`` interface (module docstring)."""

    def __init__(self, game: str, seed: int = 0, size=(64, 64), sticky: bool = True):
        gymnasium = _ale()
        self.game, self._size = game, tuple(int(s) for s in size)
        self._env = gymnasium.make(
            _env_id(game),
            frameskip=1,
            repeat_action_probability=0.25 if sticky else 0.0,
            full_action_space=False,
            max_num_frames_per_episode=MAX_FRAMES,
            disable_env_checker=True,
        )
        self._rng = np.random.default_rng(seed)
        self._seed, self._seeded, self._done = seed, False, True
        self.act_space = ActSpace(True, int(self._env.action_space.n))
        self.obs_space = {'image': (self._size + (3,), np.dtype(np.uint8))}

    def reset(self):
        if self._seeded:
            frame, _ = self._env.reset()
        else:
            frame, _ = self._env.reset(seed=self._seed)
            self._seeded = True
        for _ in range(int(self._rng.integers(0, NOOPS + 1))):
            frame, _, terminated, truncated, _ = self._env.step(0)
            if terminated or truncated:
                frame, _ = self._env.reset()
        self._done = False
        return self._pack({'image': _resize(frame, self._size)}, 0.0, True, False, False)

    def step(self, action):
        if self._done:
            raise RuntimeError('episode is over: call reset() before step()')
        action = self._discrete_action(action)
        reward, frames, terminated, truncated = 0.0, [], False, False
        for _ in range(REPEAT):
            frame, r, terminated, truncated, _ = self._env.step(action)
            reward += float(r)
            frames = (frames + [frame])[-2:]
            if terminated or truncated:
                break
        image = np.maximum(frames[0], frames[-1])
        self._done = bool(terminated or truncated)
        return self._pack({'image': _resize(image, self._size)}, reward, False, self._done, bool(terminated))

    def close(self):
        self._env.close()
