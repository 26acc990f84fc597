#!/usr/bin/env bash
# Train edge-preset variants side by side on one lent GPU within one 10-minute call.
#
#   bash training/recipes/device_train.sh BUDGET_S
#
# 1. installs the package, regenerates data/full (CPU, all cores) unless present and builds
#    the structure pool cache once (cbldm.training.variants; each run would otherwise build it);
# 2. probes two short epochs of every stage for all variants at once (they share the GPU and
#    the CPU cores, so the probe measures them under the same contention), then picks per-stage
#    epochs that fit what is left of BUDGET_S;
# 3. trains the variants concurrently (cbldm-train all), scores each on the validation split
#    (shapes no run has seen: cbldm-eval accuracy --refine 0, the networks alone), times the
#    PyTorch networks on the GPU, and packs the best run by exact atom counts into $OUT
#    (weights split into < 16 MB parts: the device tool's file limit) with every run's
#    config, log and validation table.
set -uo pipefail
export PYTHONUNBUFFERED=1
budget=${1:-560}
out=${OUT:-/tmp/cbldm-out}
data=${DATA:-data/full}
export CBLDM_DATA=$data
device=${DEVICE:-cuda}
probe_n=${PROBE_N:-256}
val_per_type=${VAL_PER_TYPE:-5}
mkdir -p "$out" work
say() { echo "[$SECONDS s] $*"; }

if [ -z "${SKIP_INSTALL:-}" ] && ! python3 -m pip install -q --no-deps --no-build-isolation . >work/pip.log 2>&1; then
    # no usable build backend: the package-dir layout by hand (cbldm.runtime -> runtime/, ...)
    tail -3 work/pip.log
    mkdir -p work/site/cbldm
    for d in runtime training export models; do ln -sfn "$PWD/$d" "work/site/cbldm/$d"; done
    export PYTHONPATH="$PWD/work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi -L || true; say "cpus $(nproc)"
if [ ! -f "$data/manifest.json" ]; then
    python3 -m cbldm.training.cli_data generate --out "$data" --workers "$(nproc)" >work/data.log 2>&1 \
        || { tail -5 work/data.log; exit 1; }
fi
say "dataset ready"
python3 - <<'PY' || exit 1
import os, tempfile
from pathlib import Path
from cbldm.training.train import TrainConfig, Trainer
Trainer(Path(tempfile.mkdtemp()), Path(os.environ["CBLDM_DATA"]), TrainConfig(max_train=8), device="cpu")
PY
say "structure pool cached"

# name | extra cbldm-train arguments; VARIANTS="name|args;name|args" replaces the list.
#   final:  the edge defaults (structures drawn beyond the recipe each epoch)
#   wide:   the same with twice the structure-VAE and prior width
#   recipe: the recipe's training shapes only (the ablation: what the drawn structures buy)
variants=(
    "final|"
    "wide|--set model.mlp_hidden=1024 --set model.prior_hidden=[512,1024,1024]"
    "recipe|--set train.variants=false"
)
if [ -n "${VARIANTS:-}" ]; then IFS=';' read -r -a variants <<<"$VARIANTS"; fi
names=""; for v in "${variants[@]}"; do names="$names ${v%%|*}"; done
export CBLDM_VARIANTS=$names
threads=$(( $(nproc) / ${#variants[@]} )); [ "$threads" -ge 1 ] || threads=1
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
draw="--set train.draw_workers=$threads"

for v in "${variants[@]}"; do
    name=${v%%|*}; args=${v#*|}
    rm -rf "work/probe-$name"
    python3 -m cbldm.training.cli_train all --data "$data" --out "work/probe-$name" --max-train $probe_n \
        --epochs 2 --device "$device" $draw $args >"work/probe-$name.log" 2>&1 &
done
wait
say "probe done"

# seconds per full epoch of each stage (slowest variant), scaled from the probe; the draw of
# an epoch's structures costs a few seconds more that does not scale with the probe's size
read -r ep_c ep_s ep_d < <(python3 - "$budget" "$SECONDS" $probe_n <<'PY'
import csv, glob, json, os, sys
budget, now, probe_n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
n_train = len(json.load(open(os.path.join(os.environ["CBLDM_DATA"], "manifest.json")))["splits"]["train"])
per = {}
for f in glob.glob("work/probe-*/log.csv"):
    for row in csv.DictReader(open(f)):  # epoch 2 of each stage: start-up costs left out
        if row["epoch"] != "2":
            continue
        per[row["stage"]] = max(per.get(row["stage"], 0.0), float(row["seconds"]) * n_train / probe_n + 4.0)
left = budget - now - 150           # validation scoring, head refit, GPU timing, packing, margin
share = {"condition": 0.12, "structure": 0.38, "denoiser": 0.50}
cap = {"condition": 30, "structure": 60, "denoiser": 200}
ep = {s: max(1, min(cap[s], int(share[s] * left / per[s]))) for s in share}
print(f"per-epoch s {per}; budget left {left:.0f} s -> epochs {ep}", file=sys.stderr)
print(ep["condition"], ep["structure"], ep["denoiser"])
PY
)
say "epochs condition $ep_c, structure $ep_s, denoiser $ep_d"

deadline=$(( budget - 100 ))
for v in "${variants[@]}"; do
    name=${v%%|*}; args=${v#*|}
    rm -rf "work/$name"
    timeout $(( deadline - SECONDS )) python3 -m cbldm.training.cli_train all --data "$data" --out "work/$name" \
        --epochs "$ep_c,$ep_s,$ep_d" --seed 0 --device "$device" $draw $args >"work/$name.train.log" 2>&1 &
done
wait
say "training done"
for v in "${variants[@]}"; do
    name=${v%%|*}
    timeout 70 python3 -m cbldm.training.cli_eval accuracy --model "work/$name" --data "$data" --split val \
        --per-type "$val_per_type" -k 4 --refine 0 --sources model --out "work/$name/val" \
        >"work/$name.val.log" 2>&1 &
done
first=$(echo $CBLDM_VARIANTS | cut -d' ' -f1)
if [ "$device" = cuda ] && [ -f "work/$first/config.json" ]; then
    python3 benchmarks/bench_gpu.py --run "work/$first" --device cuda --out "$out/gpu.json" >work/gpu_bench.log 2>&1 &
fi
wait
say "scored"

python3 - "$out" <<'PY'
import json, os, subprocess, sys, tarfile
out = sys.argv[1]
names = os.environ["CBLDM_VARIANTS"].split()
score = {}
for name in names:
    p = f"work/{name}/val/accuracy.json"
    if os.path.exists(p):
        tot = json.load(open(p))["sources"]["model"]["table"]["total"]
        score[name] = (tot["exact_count"], -tot["pair_distance_error_A"])
        print(f"{name:7s} validation (unseen shapes, networks alone): exact atom counts "
              f"{100 * tot['exact_count']:.0f} %, pair-distance error {tot['pair_distance_error_A']:.3f} A, "
              f"Rwp {tot['rwp']:.3f}, n {tot['n']}")
    else:
        print(f"{name:7s} no validation table (training or scoring did not finish)")
pick = max(score, key=score.get) if score else None
print("packing", pick)
with tarfile.open(f"{out}/small.tar.gz", "w:gz") as tar:
    for name in names:
        for f in ("config.json", "log.csv", "val/accuracy.json"):
            if os.path.exists(f"work/{name}/{f}"):
                tar.add(f"work/{name}/{f}", f"{name}/{f}")
        for f in (f"work/{name}.train.log", f"work/{name}.val.log", f"work/probe-{name}.log", "work/gpu_bench.log"):
            if os.path.exists(f):
                tar.add(f, os.path.basename(f))
if pick:
    w = f"work/{pick}/weights.safetensors"
    os.makedirs(f"{out}/{pick}", exist_ok=True)
    subprocess.run(["split", "-b", "15M", "-d", w, f"{out}/{pick}/weights.part"], check=True)
    print(pick, subprocess.run(["sha256sum", w], capture_output=True, text=True).stdout.split()[0])
PY
say "packed"
