"""CNN encoder/decoder speed on this machine: forward and parameter gradients over N 64x64x3 frames.

  python benchmarks/cnn_speed.py DEPTH FRAMES [CHUNK]      # e.g. 8 1024 512; pin with taskset -c 1

Prints compile time and the mean of 3 timed calls for: encoder forward, encoder gradient, decoder
image-loss forward and decoder gradient (`ConvEncoder` / `ConvDecoder` from recall2imagine.nets.heads,
minres 4, decoder input 256 features, CHUNK frames per rematerialised chunk).
"""

import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from recall2imagine.nets.heads import ConvDecoder, ConvEncoder

depth = int(sys.argv[1])
n = int(sys.argv[2])
chunk = int(sys.argv[3]) if len(sys.argv) > 3 else 512
key = jax.random.PRNGKey(0)
enc = ConvEncoder(["image"], (64, 64, 3), depth, 4, key=key, chunk=chunk)
dec = ConvDecoder(["image"], (3,), (64, 64, 3), 256, depth, 4, key=key, chunk=chunk)
obs = {
    "image": jnp.asarray(np.random.randint(0, 255, (n, 64, 64, 3), np.uint8)),
    "is_first": jnp.zeros((n,), bool),
}
feat = jax.random.normal(key, (n, 256))


def bench(name, f, *a):
    f = jax.jit(f)
    t = time.perf_counter()
    jax.block_until_ready(f(*a))
    c = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(f(*a))
    print(f"{name}: compile+1 {c:.2f}s, {(time.perf_counter() - t) / 3 * 1e3:.1f} ms", flush=True)


bench("enc fwd", lambda e, o: e(o, jnp.float32), enc, obs)
bench("enc grad", lambda e, o: eqx.filter_grad(lambda e: e(o, jnp.float32).sum())(e), enc, obs)
bench("dec loss fwd", lambda d, f: d.loss(f, obs).sum(), dec, feat)
bench("dec grad", lambda d, f: eqx.filter_grad(lambda d: d.loss(f, obs).sum())(d), dec, feat)
