"""A user's own Gymnasium environment, registered on import (for `--envs.import custom_gym_env`).

Dict observations: a 32 x 24 RGB image and a Box of two floats; a Box action in [-2, 2]. The reward is
higher when the action is close to the first float; episodes end after 20 steps (truncated)."""

import gymnasium
import numpy as np
from gymnasium import spaces


class Target(gymnasium.Env):
    def __init__(self):
        self.observation_space = spaces.Dict(
            {
                "camera": spaces.Box(0, 255, (32, 24, 3), np.uint8),
                "state": spaces.Box(-1.0, 1.0, (2,), np.float32),
            }
        )
        self.action_space = spaces.Box(-2.0, 2.0, (1,), np.float32)
        self._t, self._state = 0, np.zeros(2, np.float32)

    def _obs(self):
        image = np.full((32, 24, 3), int(127 * (self._state[0] + 1)), np.uint8)
        return {"camera": image, "state": self._state.copy()}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._state = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        self._t += 1
        reward = -float(abs(np.asarray(action).ravel()[0] - self._state[0]))
        self._state = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs(), reward, False, self._t >= 20, {}


if "R2ITarget-v0" not in gymnasium.registry:
    gymnasium.register("R2ITarget-v0", entry_point=Target)
