"""Any registered Gymnasium environment (``gym:<id>``), and the adapter POPGym builds on.

Observations: a uint8 image box (H x W x 3, H x W x 1 or H x W) becomes an ``image`` key (resized to
``size`` when it differs, for the CNN); every other part (Discrete, MultiDiscrete and Tuple/Dict of
them as one-hots, Box and MultiBinary as float32 values) is flattened, in space order, into one float32
``vector``. In a Dict space each image part keeps its own key (``image`` when there is one).

Actions: Discrete stays Discrete; MultiDiscrete(n_1..n_k) becomes one Discrete of size prod(n_i),
decoded mixed radix with the last component fastest; a bounded Box is continuous, normalised to
[-1, 1] on the agent side and rescaled to the env's bounds.

Episodes: ``terminated`` is terminal, ``truncated`` (a time limit) ends the episode without being
terminal, unless ``truncation_is_terminal`` (POPGym, as in R2I).
"""

from __future__ import annotations

import importlib

import numpy as np

from recall2imagine.envs.base import ActSpace, Env


def import_modules(names) -> None:
    """Imports user modules that register Gymnasium environments (``--envs.import``)."""
    for name in names or ():
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(
                f'--envs.import {name}: cannot import it ({e}); put its folder on PYTHONPATH'
            ) from None


def gym_ids() -> list[str]:
    """Every id in the Gymnasium registry (after the imports of ``--envs.import``)."""
    import gymnasium

    return sorted(gymnasium.registry)


def _is_image(space) -> bool:
    from gymnasium import spaces

    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] in (1, 3)))
    )


def _resize(image: np.ndarray, size) -> np.ndarray:
    """[H, W, C] uint8 -> [size[0], size[1], C] uint8 (bilinear)."""
    if image.shape[:2] == tuple(size):
        return image
    from PIL import Image

    channels = [
        np.asarray(Image.fromarray(image[..., c]).resize((size[1], size[0]), Image.BILINEAR))
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, -1).astype(np.uint8)


class _Flattener:
    """Maps a (nested) gymnasium observation to one float32 vector."""

    def __init__(self, space):
        from gymnasium import spaces

        self._spaces = spaces
        self.space = space
        self.size = self._size(space)

    def _size(self, space) -> int:
        s = self._spaces
        if isinstance(space, s.Discrete):
            return int(space.n)
        if isinstance(space, s.MultiDiscrete):
            return int(np.sum(space.nvec))
        if isinstance(space, (s.Box, s.MultiBinary)):
            return int(np.prod(space.shape))
        if isinstance(space, s.Tuple):
            return sum(self._size(sub) for sub in space.spaces)
        if isinstance(space, s.Dict):
            return sum(self._size(sub) for sub in space.spaces.values())
        raise ValueError(f'unsupported observation space {space}')

    def __call__(self, obs) -> np.ndarray:
        out = np.zeros(self.size, np.float32)
        end = self._fill(self.space, obs, out, 0)
        assert end == self.size
        return out

    def _fill(self, space, obs, out, offset) -> int:
        s = self._spaces
        if isinstance(space, s.Discrete):
            idx = int(obs) - int(space.start)
            if not 0 <= idx < space.n:
                raise ValueError(f'observation {obs} outside {space}')
            out[offset + idx] = 1.0
            return offset + int(space.n)
        if isinstance(space, s.MultiDiscrete):
            nvec = np.asarray(space.nvec).ravel()
            vals = np.asarray(obs).ravel() - np.asarray(space.start).ravel()
            if np.any(vals < 0) or np.any(vals >= nvec):
                raise ValueError(f'observation {obs} outside {space}')
            starts = offset + np.concatenate([[0], np.cumsum(nvec)[:-1]])
            out[starts + vals] = 1.0
            return offset + int(nvec.sum())
        if isinstance(space, (s.Box, s.MultiBinary)):
            n = int(np.prod(space.shape))
            out[offset : offset + n] = np.asarray(obs, np.float32).ravel()
            return offset + n
        if isinstance(space, s.Tuple):
            for sub, value in zip(space.spaces, obs):
                offset = self._fill(sub, value, out, offset)
            return offset
        if isinstance(space, s.Dict):
            for key, sub in space.spaces.items():
                offset = self._fill(sub, obs[key], out, offset)
            return offset
        raise NotImplementedError(space)


def unflatten_multidiscrete(index: int, nvec) -> np.ndarray:
    """Mixed-radix decoding of a flat action; the last component is fastest."""
    return np.array(np.unravel_index(int(index), tuple(int(n) for n in nvec)), np.int64)


def flatten_multidiscrete(components, nvec) -> int:
    """Inverse of ``unflatten_multidiscrete``."""
    return int(np.ravel_multi_index(tuple(int(c) for c in components), tuple(int(n) for n in nvec)))


class GymEnv(Env):
    """One Gymnasium environment behind the common ``Env`` interface (see the module docstring).

    size: (H, W) of image observations for the CNN; images of another size are resized.
    """

    truncation_is_terminal = False
    route_images = True  # False: image-like boxes are flattened into `vector` too

    def __init__(self, env_id: str, seed: int = 0, size=(64, 64)):
        import gymnasium
        from gymnasium import spaces

        self.env_id = env_id
        try:  # the passive checker only warns (e.g. about POPGym's shared info dicts)
            self._env = gymnasium.make(env_id, disable_env_checker=True)
        except gymnasium.error.DependencyNotInstalled as e:
            raise ValueError(f'gym:{env_id} needs a package that is not installed: {e}') from None
        self._seed = seed
        self._seeded = False
        self._done = True
        self._size = tuple(int(s) for s in size)
        space = self._env.observation_space
        parts = list(space.spaces.items()) if isinstance(space, spaces.Dict) else [(None, space)]
        is_image = _is_image if self.route_images else (lambda s: False)
        images = [(k, s) for k, s in parts if is_image(s)]
        vector = [(k, s) for k, s in parts if not is_image(s)]
        self._images = {('image' if len(images) == 1 or k is None else k): k for k, _ in images}
        self._vector_keys = [k for k, _ in vector]
        self._flat = _Flattener(spaces.Tuple([s for _, s in vector])) if vector else None
        self.obs_space = {}
        for name, k in self._images.items():
            channels = 1 if len(dict(images)[k].shape) == 2 else dict(images)[k].shape[-1]
            self.obs_space[name] = (self._size + (channels,), np.dtype(np.uint8))
        if self._flat is not None:
            self.obs_space['vector'] = ((self._flat.size,), np.dtype(np.float32))

        space = self._env.action_space
        self._act_kind = None
        if isinstance(space, spaces.Discrete):
            self._act_kind = 'discrete'
            self._act_start = int(space.start)
            self.act_space = ActSpace(True, int(space.n))
        elif isinstance(space, spaces.MultiDiscrete):
            self._act_kind = 'multidiscrete'
            self._nvec = np.asarray(space.nvec).ravel()
            self._act_start = np.asarray(space.start).ravel()
            self._act_shape = space.shape
            self.act_space = ActSpace(True, int(np.prod(self._nvec)))
        elif isinstance(space, spaces.Box):
            self._act_kind = 'box'
            self._act_shape = space.shape
            self._low = np.asarray(space.low, np.float32).ravel()
            self._high = np.asarray(space.high, np.float32).ravel()
            if not (np.all(np.isfinite(self._low)) and np.all(np.isfinite(self._high))):
                raise ValueError(
                    f'{env_id}: unbounded Box action space {space} (rescale it to finite bounds)'
                )
            n = int(np.prod(space.shape))
            self.act_space = ActSpace(False, n, (-1.0,) * n, (1.0,) * n)
        else:
            raise ValueError(f'{env_id}: unsupported action space {space} (Discrete, MultiDiscrete or Box)')

    def _convert_action(self, action):
        if self._act_kind == 'discrete':
            return self._discrete_action(action) + self._act_start
        if self._act_kind == 'multidiscrete':
            idx = self._discrete_action(action)
            comp = unflatten_multidiscrete(idx, self._nvec) + self._act_start
            return comp.reshape(self._act_shape)
        a = self._continuous_action(action, self._low, self._high)
        return a.reshape(self._act_shape)

    def _obs(self, obs) -> dict:
        parts = obs if isinstance(obs, dict) else {None: obs}
        out = {}
        for name, k in self._images.items():
            image = np.asarray(parts[k], np.uint8)
            out[name] = _resize(image[..., None] if image.ndim == 2 else image, self._size)
        if self._flat is not None:
            out['vector'] = self._flat(tuple(parts[k] for k in self._vector_keys))
        return out

    def reset(self):
        if not self._seeded:
            obs, _ = self._env.reset(seed=self._seed)
            self._seeded = True
        else:
            obs, _ = self._env.reset()
        self._done = False
        return self._pack(self._obs(obs), 0.0, True, False, False)

    def step(self, action):
        if self._done:
            raise RuntimeError('episode is over: call reset() before step()')
        obs, reward, terminated, truncated, _ = self._env.step(self._convert_action(action))
        done = bool(terminated or truncated)
        self._done = done
        terminal = done if self.truncation_is_terminal else bool(terminated)
        return self._pack(self._obs(obs), float(reward), False, done, terminal)

    def close(self):
        self._env.close()
