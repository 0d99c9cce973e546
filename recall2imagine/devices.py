"""Precision and devices: the compute dtype of `--jax.precision`, the train / policy devices of
`--jax.train_devices` / `--jax.policy_devices`, where the agent's arrays are placed, and the host memory
XLA's compiler leaves behind."""

import ctypes
import ctypes.util

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from recall2imagine import allocator

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_trim_listener = None


def release_free_memory():
    """A function that hands the allocator's freed memory back to the OS, or None: TCMalloc's
    `MallocExtension_ReleaseFreeMemory` when it is loaded (recall2imagine/allocator.py), else glibc's
    `malloc_trim(0)`."""
    try:
        if allocator.loaded():
            release = ctypes.CDLL(None).MallocExtension_ReleaseFreeMemory
            return lambda: release()
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return None


def trim_after_compiles(trim=None, min_seconds=5.0):
    """After every XLA compilation of at least `min_seconds`, calls `trim` (default `release_free_memory()`).

    Compiling the update (popgym_main) takes ~1.1 GB of host memory that the compiler frees at the end,
    but the allocator keeps it, so without a trim the process holds it for the whole run
    (BENCHMARKS.md, "Where an update's time and memory go"). The update compiles for 10 s or more; the
    agent's initialisation (~3 s) is left alone, as the update's compile reuses what it freed instead of
    faulting in fresh memory. Installed once per process; returns the listener (None when there is
    nothing to call)."""
    global _trim_listener
    if _trim_listener is not None:
        return _trim_listener
    trim = trim or release_free_memory()
    if trim is None:
        return None

    def listener(event, seconds, **_):
        if event == COMPILE_EVENT and seconds >= min_seconds:
            trim()

    jax.monitoring.register_event_duration_secs_listener(listener)
    _trim_listener = listener
    return listener


def release_programs(*jitted):
    """Drops the compiled programs of `eqx.filter_jit` functions that will not run again (a later call
    compiles anew). Equinox keeps a function's jitted form for as long as the process lives, even
    once nothing refers to the function."""
    for f in jitted:
        f._cached.clear_cache()  # equinox's `jax.jit` of the function


def resolve_precision(precision):
    """`jax.precision` as a DTYPES key: auto is float16 on accelerators and float32 on the CPU, where
    XLA has no fast float16 kernels (the full mmaze update ran > 20 min in float16 on 2 cores)."""
    if precision == "auto":
        return "float32" if jax.default_backend() == "cpu" else "float16"
    if precision not in DTYPES:
        raise ValueError(f"jax.precision must be auto, float32, bfloat16 or float16, got {precision!r}")
    return precision


def resolve_devices(cfg):
    """(train devices, policy device) from `--jax.train_devices` / `--jax.policy_devices`, ids of this
    process's devices. With several processes (`--jax.num_processes`) the train devices are those ids
    on every process, in process order: the mesh spans them all.

    Raises ConfigError (one line, says what to set) for an id that does not exist, a repeated train
    device, more than one policy device, or a batch size the train devices do not divide.
    """
    from recall2imagine.config import ConfigError

    devices = jax.local_devices()
    available = f"available on {jax.default_backend()}: " + ", ".join(
        f"{i} ({d.device_kind})" for i, d in enumerate(devices)
    )
    for name in ("train_devices", "policy_devices"):
        ids = list(cfg.jax[name])
        bad = [i for i in ids if not 0 <= i < len(devices)]
        if not ids or bad:
            raise ConfigError(
                f"--jax.{name} {' '.join(map(str, ids)) or '(empty)'}: no such device; {available}"
            )
    train_ids, policy_ids = list(cfg.jax.train_devices), list(cfg.jax.policy_devices)
    if len(set(train_ids)) != len(train_ids):
        raise ConfigError(f"--jax.train_devices {' '.join(map(str, train_ids))}: a device is listed twice")
    if len(policy_ids) != 1:
        raise ConfigError(
            f"--jax.policy_devices {' '.join(map(str, policy_ids))}: the policy runs on one "
            f"device; give one id, e.g. --jax.policy_devices {policy_ids[0]}"
        )
    procs = jax.process_count()
    n, B = len(train_ids) * procs, cfg.batch_size
    if B % n:
        where = f" on each of {procs} processes" if procs > 1 else ""
        raise ConfigError(
            f"--batch_size {B} is not divisible by the {n} train devices (--jax.train_devices "
            f"{' '.join(map(str, train_ids))}{where}): the batch is split along B; set --batch_size to a "
            f"multiple of {n} (e.g. {-(-B // n) * n})"
        )
    train = [jax.local_devices(process_index=p)[i] for p in range(procs) for i in train_ids]
    return train, devices[policy_ids[0]]


class PolicyParams:
    """The (world model, actor) the policy acts with: the live ones when it shares the one train device
    (`Placement.shared`), else a copy on the policy device, taken by `set` and every `every` updates."""

    def __init__(self, place, every):
        self.place, self.every, self.copy, self.since = place, every, None, 0

    def set(self, live):
        """A new state's (wm, actor): copied to the policy device (a no-op when shared)."""
        self.since = 0
        if not self.place.shared:
            self.copy = self.place.policy_copy(live)

    def updated(self, live):
        """After each update: the copy is refreshed every `every` updates."""
        self.since += 1
        if not self.place.shared and self.since >= self.every:
            self.set(live)

    def get(self, live):
        return live if self.place.shared else self.copy


def scan_parallel(setting):
    """`ssm.parallel` (auto | True | False) as a bool. auto: the associative scan on accelerators, and with
    several processes, where the sequential scan's backward pass all-reduces two SSM gradients at every
    step (BENCHMARKS.md, "Several processes")."""
    auto = jax.default_backend() != "cpu" or jax.process_count() > 1
    return {"auto": auto, "True": True, "False": False}[str(setting)]


_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))  # fresh buffers on the input's device


class Placement:
    """Where the agent's arrays live.

    Training is data-parallel over the train devices (a 1-D mesh; the batch [B, T, ...] is split along
    B, the state is replicated and GSPMD all-reduces the gradients). With several processes the mesh
    spans the train devices of all of them and each process supplies its share of the batch. The
    policy runs on this process's policy device: with one train device that is also the policy
    device (`shared`) it reads the live parameters, else a copy (`policy_copy`) the agent refreshes
    every `jax.sync_every` updates.
    """

    def __init__(self, cfg):
        self.train_devices, self.policy_device = resolve_devices(cfg)
        self.processes = jax.process_count()
        self.mesh = None
        if len(self.train_devices) == 1:
            self.state_sharding = self.batch_sharding = jax.sharding.SingleDeviceSharding(
                self.train_devices[0]
            )
        else:
            self.mesh = jax.sharding.Mesh(np.array(self.train_devices), ("batch",))
            self.state_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
            self.batch_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("batch"))
        self.shared = self.train_devices == [self.policy_device]

    def state(self, tree):
        """`tree` (a module pytree) replicated on the train devices (a restored checkpoint arrives on the
        default device). Saving needs nothing: every leaf is whole on each train device. With several
        processes every process must pass the same values (the same seed, the same checkpoint)."""
        arrays, static = eqx.partition(tree, eqx.is_array)
        if self.processes > 1:  # from host memory: each process provides its devices' copies
            arrays = jax.tree.map(lambda x: np.asarray(_local(x)), arrays)
        return eqx.combine(jax.device_put(arrays, self.state_sharding), static)

    def replicate(self, x):
        """A small array (e.g. a PRNG key, the same on every process) replicated on the train devices."""
        return jax.device_put(np.asarray(x) if self.processes > 1 else x, self.state_sharding)

    def batch(self, batch):
        """This process's replay batch {key: [B / processes, T, ...]} as the global batch, split along
        B over the train devices."""
        B, n = len(batch["is_first"]), len(self.train_devices) // self.processes
        if B % n:
            raise ValueError(
                f"batch size {B} is not divisible by the {n} train devices; "
                f"sample a multiple of {n} (--batch_size)"
            )
        if self.processes > 1:
            return jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch
            )
        return jax.device_put(batch, self.batch_sharding)

    def whole(self, tree):
        """Inside the jitted update: keep `tree` whole on every train device (a no-op on one)."""
        if self.mesh is None:
            return tree
        arrays, static = eqx.partition(tree, eqx.is_array)
        return eqx.combine(jax.lax.with_sharding_constraint(arrays, self.state_sharding), static)

    def policy_copy(self, tree):
        """A copy of `tree` (a module pytree) on the policy device, in buffers of its own."""
        arrays, static = eqx.partition(tree, eqx.is_array)
        arrays = jax.device_put(jax.tree.map(_local, arrays), self.policy_device)
        if self.policy_device in self.train_devices:
            # device_put hands back the train state's own buffers there (even with may_alias=False,
            # jax 0.10), which the next update donates: copy them
            arrays = _copy_tree(arrays)
        return eqx.combine(arrays, static)


def _local(x):
    """This process's copy of a replicated array (the array itself when it lives on this process alone)."""
    return x if getattr(x, "is_fully_addressable", True) else x.addressable_data(0)
