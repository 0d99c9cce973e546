#!/usr/bin/env bash
# One device-machine session (2026-11-27): POPGym learning runs on one GPU, in parallel.
# 1. the full-size `popgym` config on RepeatPreviousEasy (paper sizes, float16);
# 2-3. the CPU-sized RepeatPreviousMedium command of BENCHMARKS.md, seeds 1 and 2;
# 4. RepeatPreviousEasy with popgym_cpu plus the RPM flags (reward bins over +-1, actent 0.003).
# Each run gets SIGINT after $T seconds (it saves a checkpoint); logs come back in $OUT/logs.tgz and
# the CPU-sized runs' last checkpoints in $OUT/ckpt.tar.part-* (to resume on the CPU).
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.2
T=${T:-450}; PLAT=${PLAT:-gpu}; PY=${PY:-python3}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  $PY -c "import jax; print('jax', jax.__version__, jax.devices())"; } > $OUT/env.log 2>&1
R=/tmp/runs; mkdir -p $R
train() { name=$1; shift; timeout -s INT -k 60 $T $PY -m recall2imagine.train --logdir $R/$name \
  --jax.platform $PLAT --run.save_every 120 "$@" > $R/$name.log 2>&1; echo "$name rc=$?" >> $OUT/env.log; }
SMALL="--configs popgym popgym_cpu --run.steps 1000000"
RPM="--task gym_popgym:popgym-RepeatPreviousMedium-v0 --rssm.hidden 256 --ssm.dt_min 0.001 --ssm.dt_max 0.1 --reward_head.bin_max 1.0 --actent 0.003"
train full_rpe --configs popgym --replay_size 1000000 &
train rpm_s1 $SMALL $RPM --seed 1 &
train rpm_s2 $SMALL $RPM --seed 2 &
train rpe_flags $SMALL --task gym_popgym:popgym-RepeatPreviousEasy-v0 --reward_head.bin_max 1.0 --actent 0.003 &
sleep 60; nvidia-smi >> $OUT/env.log 2>&1
wait
date -u >> $OUT/env.log
cd $R && tar czf $OUT/logs.tgz --exclude checkpoints --exclude videos --exclude tb . 
ck=""; for n in rpm_s1 rpm_s2 rpe_flags; do d=$(ls -d $n/checkpoints/ckpt-* 2>/dev/null | tail -1); [ -n "$d" ] && ck="$ck $d $n/config.yaml"; done
tar cf - $ck | split -b 15M - $OUT/ckpt.tar.part-
ls -la $OUT
