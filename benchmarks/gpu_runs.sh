#!/usr/bin/env bash
# Training runs in parallel on one lent GPU (the device tool), from a spec file:
#   T=430 bash benchmarks/gpu_runs.sh benchmarks/gpu/popgym_parallel.txt
# Each spec line is `NAME ARGS...` (train.py flags; `#` starts a comment); a NAME starting with `+`
# also brings back its last checkpoint (at most three such runs: what comes back is capped at 64 MiB).
# Every run gets `--jax.platform $PLAT --run.save_every 120` and SIGINT after $T seconds (it saves a
# checkpoint and its logs). Logs come back in $OUT/logs.tgz, checkpoints in $OUT/ckpt.tar.part-*
# (`cat ckpt.tar.part-* | tar xf -`, then resume on the CPU with `--jax.platform cpu`).
# Needs the popgym/gymnasium wheels in .whl/ (carried) on the device machine.
set -u
SPEC=${1:?usage: bash benchmarks/gpu_runs.sh SPEC_FILE}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.2}
T=${T:-430}; PLAT=${PLAT:-gpu}; PY=${PY:-python3}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  $PY -c "import jax; print('jax', jax.__version__, jax.devices())"; } > $OUT/env.log 2>&1
R=/tmp/runs; mkdir -p $R; keep=()
while read -r name args; do
  case "$name" in ''|'#'*) continue;; '+'*) name=${name#+}; keep+=("$name");; esac
  # shellcheck disable=SC2086  # ARGS are split on purpose
  ( timeout -s INT -k 60 "$T" $PY -m recall2imagine.train --logdir $R/$name --jax.platform $PLAT \
      --run.save_every 120 $args > $R/$name.log 2>&1; echo "$name rc=$?" >> $OUT/env.log ) &
done < "$SPEC"
sleep 60; nvidia-smi >> $OUT/env.log 2>&1
wait
date -u >> $OUT/env.log
cd $R && tar czf $OUT/logs.tgz --exclude checkpoints --exclude videos --exclude tb .
ck=""; for n in "${keep[@]}"; do d=$(ls -d $n/checkpoints/ckpt-* 2>/dev/null | tail -1); [ -n "$d" ] && ck="$ck $d $n/config.yaml"; done
[ -n "$ck" ] && tar cf - $ck | split -b 15M - $OUT/ckpt.tar.part-
ls -la $OUT
