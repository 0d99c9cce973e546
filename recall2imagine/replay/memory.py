"""In-memory FIFO replay: one ring buffer per worker, uniform window sampling.

Each worker (env) owns a ring of ``capacity // num_workers`` steps. A window is
``length`` consecutive steps of one worker's stream; windows may cross episode
boundaries (spec 7.2) and are drawn uniformly over all windows still stored.
``is_first`` of the first step of every window is set True (spec 7.1).
"""
from __future__ import annotations

import numpy as np


class MemoryReplay:

  def __init__(self, capacity: int, num_workers: int, seed: int = 0):
    capacity, num_workers = int(capacity), int(num_workers)
    if num_workers < 1:
      raise ValueError('num_workers must be >= 1')
    if capacity // num_workers < 1:
      raise ValueError(f'capacity {capacity} < num_workers {num_workers}')
    self.capacity = capacity
    self.num_workers = num_workers
    self.per_worker = capacity // num_workers
    self.rng = np.random.default_rng(seed)
    # Total steps ever written per worker; ring position = count % per_worker.
    self.counts = np.zeros(num_workers, np.int64)
    self.data: dict[str, np.ndarray] | None = None  # key -> [W, C, ...]

  # Insertion.

  def _allocate(self, step: dict[str, np.ndarray]):
    self.data = {}
    for key, value in step.items():
      value = np.asarray(value)
      self.data[key] = np.zeros(
          (self.num_workers, self.per_worker) + value.shape[1:], value.dtype)

  def add(self, step: dict, workers) -> None:
    """Adds one step per worker: every ``step[key]`` has leading dim N."""
    workers = np.asarray(workers, np.int64).reshape(-1)
    step = {k: np.asarray(v) for k, v in step.items()}
    if len(np.unique(workers)) != len(workers):
      raise ValueError('workers of one add() call must be distinct')
    if np.any(workers < 0) or np.any(workers >= self.num_workers):
      raise ValueError(f'worker ids must lie in [0, {self.num_workers})')
    if self.data is None:
      self._allocate(step)
    if set(step) != set(self.data):
      raise KeyError(f'step keys {sorted(step)} differ from the stored keys '
                     f'{sorted(self.data)}')
    pos = self.counts[workers] % self.per_worker
    for key, value in step.items():
      if len(value) != len(workers):
        raise ValueError(f'{key}: leading dim {len(value)} != {len(workers)}')
      self.data[key][workers, pos] = value
    self.counts[workers] += 1

  # Sampling.

  def __len__(self) -> int:
    return int(np.minimum(self.counts, self.per_worker).sum())

  def stored(self) -> np.ndarray:
    """Steps currently stored per worker."""
    return np.minimum(self.counts, self.per_worker)

  def num_windows(self, length: int) -> int:
    return int(np.maximum(self.stored() - length + 1, 0).sum())

  def sample(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
    """Returns ``{key: [batch_size, length, ...]}`` of uniform windows."""
    if length > self.per_worker:
      raise ValueError(f'length {length} exceeds the per-worker ring size '
                       f'{self.per_worker}')
    stored = self.stored()
    windows = np.maximum(stored - length + 1, 0)
    total = int(windows.sum())
    if total == 0:
      raise ValueError(f'no window of length {length} stored yet '
                       f'({len(self)} steps in replay)')
    flat = self.rng.integers(0, total, size=batch_size)
    cum = np.cumsum(windows)
    worker = np.searchsorted(cum, flat, side='right')
    offset = flat - (cum[worker] - windows[worker])
    # Global (ever-written) index of each window start, then ring positions.
    start = self.counts[worker] - stored[worker] + offset
    pos = (start[:, None] + np.arange(length)[None]) % self.per_worker
    w = worker[:, None]
    batch = {key: arr[w, pos] for key, arr in self.data.items()}
    if 'is_first' in batch:
      batch['is_first'][:, 0] = True
    return batch

  # Checkpointing.

  def state_dict(self) -> dict:
    """Arrays under 'data' are the live buffers (no copy): serialise the
    result before adding more steps."""
    return {
        'capacity': self.capacity,
        'num_workers': self.num_workers,
        'counts': self.counts.copy(),
        'data': ({} if self.data is None else
                 dict(self.data)),
        'rng': self.rng.bit_generator.state,  # nested dict of ints
    }

  def load_state_dict(self, d: dict) -> None:
    if (int(d['capacity']), int(d['num_workers'])) != (
        self.capacity, self.num_workers):
      raise ValueError(
          f'replay state has capacity {d["capacity"]} and '
          f'{d["num_workers"]} workers; this replay has {self.capacity} and '
          f'{self.num_workers}')
    self.counts = np.asarray(d['counts'], np.int64).copy()
    self.data = ({k: np.array(v) for k, v in d['data'].items()}
                 if len(d['data']) else None)
    self.rng.bit_generator.state = d['rng']
