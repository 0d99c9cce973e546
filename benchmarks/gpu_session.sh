#!/usr/bin/env bash
# One device-machine session: GPU checks for BENCHMARKS.md. Run from the repo root with $OUT set
# (the device tool), wheels for popgym/gymnasium carried in .whl/. Each step has its own timeout
# so one slow step does not lose the others; all output lands in $OUT/*.log.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import jax, equinox, optax, numpy; print('jax', jax.__version__, jax.devices(), 'eqx', equinox.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__)"; } 2>&1 | tee $OUT/env.log
# 1. S5 tests on the GPU (parallel scan vs loop, gradients, step vs scan)
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ssm.py 2>&1 | tail -40 | tee $OUT/tests.log
# 2. world-model train step, full popgym config, float16, ssm vs gru at equal tokens
timeout 330 python3 benchmarks/train_step.py --configs popgym --lengths 256 1024 4096 --tokens 4096 \
  --repeats 5 --warmup 2 --agent False --timeout 150 --out $OUT/bench --jax.platform gpu 2>&1 | tail -30 | tee $OUT/bench.log
# 3. a short popgym run on the GPU (full popgym config, float16)
timeout 170 python3 -m recall2imagine.train --configs popgym --logdir /tmp/run --run.log_every 10 \
  --jax.platform gpu --replay_size 1000000 2>&1 | tail -25 | tee $OUT/run.log
cp /tmp/run/metrics.jsonl $OUT/run_metrics.jsonl
ls -R $OUT | head -30
