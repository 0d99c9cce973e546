"""Precision and devices: the compute dtype of `--jax.precision` and the train / policy devices of
`--jax.train_devices` / `--jax.policy_devices`."""
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_precision(precision):
    """`jax.precision` as a DTYPES key: auto is float16 on accelerators and float32 on the CPU, where
    XLA has no fast float16 kernels (the full mmaze update ran > 20 min in float16 on 2 cores)."""
    if precision == "auto":
        return "float32" if jax.default_backend() == "cpu" else "float16"
    if precision not in DTYPES:
        raise ValueError(f"jax.precision must be auto, float32, bfloat16 or float16, got {precision!r}")
    return precision


def resolve_devices(cfg):
    """(train devices, policy device) from `--jax.train_devices` / `--jax.policy_devices`.

    Raises ConfigError (one line, says what to set) for an id that does not exist, a repeated train
    device, more than one policy device, or a batch size the train devices do not divide.
    """
    from recall2imagine.config import ConfigError
    devices = jax.devices()
    available = f"available on {jax.default_backend()}: " + ", ".join(
        f"{i} ({d.device_kind})" for i, d in enumerate(devices))
    for name in ("train_devices", "policy_devices"):
        ids = list(cfg.jax[name])
        bad = [i for i in ids if not 0 <= i < len(devices)]
        if not ids or bad:
            raise ConfigError(f"--jax.{name} {' '.join(map(str, ids)) or '(empty)'}: no such device; {available}")
    train_ids, policy_ids = list(cfg.jax.train_devices), list(cfg.jax.policy_devices)
    if len(set(train_ids)) != len(train_ids):
        raise ConfigError(f"--jax.train_devices {' '.join(map(str, train_ids))}: a device is listed twice")
    if len(policy_ids) != 1:
        raise ConfigError(f"--jax.policy_devices {' '.join(map(str, policy_ids))}: the policy runs on one "
                          f"device; give one id, e.g. --jax.policy_devices {policy_ids[0]}")
    n, B = len(train_ids), cfg.batch_size
    if B % n:
        raise ConfigError(
            f"--batch_size {B} is not divisible by the {n} train devices (--jax.train_devices "
            f"{' '.join(map(str, train_ids))}): the batch is split along B; set --batch_size to a multiple "
            f"of {n} (e.g. {-(-B // n) * n})")
    return [devices[i] for i in train_ids], devices[policy_ids[0]]
