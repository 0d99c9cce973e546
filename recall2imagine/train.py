"""Train an R2I agent.

  python -m recall2imagine.train --configs popgym cpu --task gym_popgym:popgym-RepeatPreviousEasy-v0
  python recall2imagine/train.py --configs bsuite debug --task bsuite:memory_len/0 --logdir /tmp/run

Flow (recall2imagine/trainer.py): envs -> driver -> replay -> agent.train (world model, imagination,
actor-critic) -> logger. This module parses the command line, picks the JAX platform and handles signals.
"""

import os
import pathlib
import re
import signal
import sys
import threading
import warnings

if __package__ in (None, ""):  # `python recall2imagine/train.py`: make the package importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np

from recall2imagine import allocator
from recall2imagine import config as configlib
from recall2imagine.util import warn


def setup_jax(cfg):
    """Pick the platform before JAX initialises its backends."""
    import jax

    platform = cfg.jax.platform
    if not cfg.jax.prealloc:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if platform != "auto":
        jax.config.update("jax_platforms", {"gpu": "cuda"}.get(platform, platform))
    jax.config.update("jax_disable_jit", not cfg.jax.jit)  # --jax.jit False: op by op, for debugging
    cache = compile_cache_dir(cfg.jax.compile_cache)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            warn(f"--jax.compile_cache {cache}: {e.strerror or e}; compiling without a cache")
        else:
            # programs that took a second or more to compile; least recently used ones beyond 2 GiB go
            jax.config.update("jax_compilation_cache_dir", str(cache))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
            jax.config.update("jax_compilation_cache_max_size", 2 * 2**30)
            one_line_cache_warnings(cache)
    if cfg.jax.num_processes > 1:
        start_processes(cfg)
    try:
        backend = jax.default_backend()
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise configlib.ConfigError(
            f"--jax.platform {platform}: not available here ({reason}); use --jax.platform cpu"
        )
    from recall2imagine.devices import resolve_devices

    # device ids exist, one policy device, batch_size divisible: fail before the envs start
    resolve_devices(cfg)
    return backend


def compile_cache_dir(setting):
    """`jax.compile_cache` as a folder, None when off: auto = $XDG_CACHE_HOME/recall2imagine/jax
    (~/.cache/recall2imagine/jax without it)."""
    if setting == "off":
        return None
    if setting == "auto":
        base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
        return pathlib.Path(base) / "recall2imagine" / "jax"
    return pathlib.Path(setting).expanduser()


# how JAX words a failed read or write of its persistent compilation cache (jax/_src/compiler.py)
CACHE_ERROR = re.compile(
    r"Error (reading|writing) persistent compilation cache entry for '[^']*': (.*)", re.S
)


def one_line_cache_warnings(cache):
    """JAX reports each compile-cache entry it cannot read or write (a full disk, a folder made
    read-only) as a two-line Python warning, program after program; a run shows one line per kind
    instead, and goes on compiling what it cannot read. Installed once per process."""
    show = warnings.showwarning
    if getattr(show, "cache_warnings", None) is not None:
        show.cache_warnings.update(cache=cache)
        return
    state = {"cache": cache, "shown": set()}

    def showwarning(message, category, filename, lineno, file=None, line=None):
        m = CACHE_ERROR.match(str(message))
        if m is None:
            return show(message, category, filename, lineno, file, line)
        if m.group(1) not in state["shown"]:
            state["shown"].add(m.group(1))
            reason = " ".join(m.group(2).split())
            warn(
                f"--jax.compile_cache {state['cache']}: {m.group(1)} a compiled program failed ({reason}); "
                "the run goes on (--jax.compile_cache off skips the cache)"
            )

    showwarning.cache_warnings = state
    warnings.showwarning = showwarning


def start_processes(cfg):
    """Joins the run's processes through jax.distributed (CPU collectives over gloo) and checks that
    all of them run the same config (but for `jax.process_id`)."""
    import jax
    from jax.experimental import multihost_utils

    from recall2imagine.checkpoint import config_hash

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address, timeout, n, i = (
        cfg.jax.coordinator,
        cfg.jax.coordinator_timeout,
        cfg.jax.num_processes,
        cfg.jax.process_id,
    )

    def give_up():  # jax aborts the process with a stack trace when joining times out: stop first, in one line
        print(
            f"error: --jax.coordinator {address}: process {i} of {n} could not join within {timeout:g} s; start "
            "every process with the same --jax.coordinator (process 0's host and a free port) and "
            "--jax.num_processes, or raise --jax.coordinator_timeout",
            file=sys.stderr,
            flush=True,
        )
        os._exit(2)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(address, n, i, initialization_timeout=int(timeout) + 60)
    except Exception as e:  # noqa: BLE001 - e.g. a malformed address
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise configlib.ConfigError(
            f"--jax.coordinator {address}: process {i} of {n} could not join ({reason})"
        )
    finally:
        watchdog.cancel()
    if threading.current_thread() is threading.main_thread():
        # jax.distributed catches SIGTERM itself (its preemption notifier): give it back to main()'s
        # handler, which stops all processes together at a safe point
        signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM))
    mine = np.frombuffer(bytes.fromhex(config_hash(_shared_config(cfg))), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(cfg.jax.num_processes, -1)
    differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
    if differ:  # every process stops, not only the odd one out
        raise configlib.ConfigError(
            f"process {', '.join(map(str, differ))} of {cfg.jax.num_processes} runs another config than "
            "process 0: start all processes with the same flags (only --jax.process_id differs)"
        )


def _shared_config(cfg):
    return {k: v for k, v in cfg.to_dict().items() if k != "jax"} | {
        "jax": {k: v for k, v in cfg.jax.to_dict().items() if k != "process_id"}
    }


def check_logdir(cfg):
    """The logdir (or its default) can be created and written, else a one-line ConfigError."""
    logdir = pathlib.Path(configlib.default_logdir(cfg))
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        probe = logdir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise configlib.ConfigError(
            f"--logdir {logdir} cannot be created or written ({reason}); choose a writable folder"
        ) from None


def run(cfg):
    """Train with config `cfg` (see recall2imagine/trainer.py); returns the final mean return."""
    check_logdir(cfg)
    backend = setup_jax(cfg)
    from recall2imagine.trainer import Trainer  # after setup_jax: the platform is chosen first

    return Trainer(cfg, backend, should_stop=lambda: STOP["requested"]).run()


STOP = {"requested": False}


def _stop_on_signal(signum, frame):
    """First Ctrl-C / SIGTERM: stop at the next safe point (between env steps, never inside an
    update, whose input buffers are donated) and save. A second one stops at once."""
    if STOP["requested"]:
        raise KeyboardInterrupt
    STOP["requested"] = True


def main(argv=None):
    entry, argv = argv is None, sys.argv[1:] if argv is None else argv
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and SIGTERM (schedulers, `kill`) stop the run the same way: save a checkpoint and
        # the logs. Installed explicitly because a process started in the background may inherit an
        # ignored SIGINT; restored on return for callers that run main() in-process.
        STOP["requested"] = False
        previous = {sig: signal.signal(sig, _stop_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cfg = configlib.parse(argv)
        if entry:  # the program itself (r2i-train, python -m ...), not a caller's main(argv)
            allocator.reexec(cfg.jax.malloc)
        run(cfg)
    except (configlib.ConfigError, ValueError) as e:  # bad flag, unknown task, ...: one line, says what to do
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # jax's XlaRuntimeError is one
        text = " ".join(str(e).split())
        if "RESOURCE_EXHAUSTED" not in text:
            raise
        need = re.search(r"allocating (\d+) bytes", text)
        need = f" (one buffer of {int(need.group(1)) / 2**30:.1f} GiB)" if need else ""
        print(
            f"error: out of memory on the device{need}: lower --batch_size / --batch_length, "
            f"--imag_starts or the model size (e.g. --configs ... cpu / mmaze_small), or use a larger device; "
            f"the last checkpoint is kept",
            file=sys.stderr,
        )
        return 3
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
