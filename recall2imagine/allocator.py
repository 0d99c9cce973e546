"""The process's memory allocator: TCMalloc in place of glibc's malloc where the system has it.

XLA's CPU runtime allocates an update's temporaries afresh on every call (2.9 GB at the popgym config's
4 x 1024, 0.2 GB at 4 x 64). glibc serves blocks that large from their own mmap and unmaps them when they
are freed, so each update faults its temporaries back in, page by page, zeroed by the kernel; TCMalloc
keeps the freed pages and hands them out again. Measured (BENCHMARKS.md, "Where an update's time and
memory go"): updates 16-20% faster at 4 x 64 and 4 x 1024, the same peak memory, the small `popgym_cpu`
update unchanged. A library can replace malloc only from the start of a process, so `r2i-train`
re-executes itself once with it in LD_PRELOAD (`--jax.malloc`: auto, tcmalloc or system).

Debian / Ubuntu: `apt-get install libtcmalloc-minimal4` (`make install`, which `make train` runs, installs it
with apt-get when it runs as root).
"""

import ctypes.util
import os
import sys

LIBRARY = "tcmalloc_minimal"  # gperftools' TCMalloc without the profiler
MARK = "R2I_MALLOC_REEXEC"  # set in the re-executed process: never re-execute twice
# no line on stderr per allocation above 1 GiB; freed memory kept for the next update rather than handed
# back by TCMalloc's background release (the agent hands it back after each compile: devices.py)
SETTINGS = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2**40), "TCMALLOC_RELEASE_RATE": "0"}


class AllocatorError(ValueError):
    """--jax.malloc tcmalloc without the library."""


def find():
    """The TCMalloc library's file name (e.g. libtcmalloc_minimal.so.4), or None."""
    return ctypes.util.find_library(LIBRARY)


def loaded():
    """Whether TCMalloc is mapped into this process."""
    try:
        with open("/proc/self/maps") as f:
            return "tcmalloc" in f.read()
    except OSError:
        return False


def plan(choice, environ):
    """The environment to re-execute with for `--jax.malloc choice`, or None to go on as is.

    auto: TCMalloc when it is installed and not loaded yet; tcmalloc: the same, but its absence is an
    error; system: never (glibc's malloc, or whatever LD_PRELOAD already names)."""
    if choice == "system" or environ.get(MARK) or loaded():
        return None
    lib = find()
    if lib is None:
        if choice == "tcmalloc":
            raise AllocatorError(
                "--jax.malloc tcmalloc: libtcmalloc_minimal is not installed "
                "(apt-get install libtcmalloc-minimal4); or use --jax.malloc auto / system"
            )
        return None
    preload = " ".join(p for p in (lib, environ.get("LD_PRELOAD", "")) if p)
    return {**SETTINGS, **environ, "LD_PRELOAD": preload, MARK: "1"}


def reexec(choice):
    """Replaces this process by the same command with TCMalloc preloaded (see `plan`); returns when
    there is nothing to do. Only for a program's entry point: the command is `sys.orig_argv`."""
    env = plan(choice, os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
