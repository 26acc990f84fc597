#!/usr/bin/env bash
# Train edge-preset variants side by side on one lent GPU within one 10-minute call.
#
#   bash training/recipes/device_train.sh BUDGET_S [LOCAL_MANIFEST]
#
# 1. installs the package, regenerates data/full (CPU, all cores) unless present, and when a
#    local dataset manifest is given checks every shard is byte-identical to it (then uses
#    that manifest, so the runs record the same data hash as the local copy);
# 2. probes two short epochs of every stage (times the second) for all variants at once (they share the GPU and
#    the CPU cores, so the probe measures them under the same contention), then picks per-stage
#    epochs that fit what is left of BUDGET_S;
# 3. trains the variants concurrently (cbldm-train all), compares their sampled latents on
#    the validation split (cbldm-eval latents), and packs the best run and the no-augmentation
#    run into $OUT (weights split into < 16 MB parts: the device tool's file limit).
set -uo pipefail
export PYTHONUNBUFFERED=1
budget=${1:-540}
local_manifest=${2:-}
out=${OUT:-/tmp/cbldm-out}
data=${DATA:-data/full}
export CBLDM_DATA=$data
device=${DEVICE:-cuda}
probe_n=${PROBE_N:-1024}
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
if [ -n "$local_manifest" ]; then
    python3 - "$local_manifest" <<'PY' || exit 1
import json, os, shutil, sys
man = os.path.join(os.environ["CBLDM_DATA"], "manifest.json")
here = json.load(open(man)); ref = json.load(open(sys.argv[1]))
same = here["shard_files"] == ref["shard_files"] and here["splits"] == ref["splits"]
print("shards byte-identical to the local dataset:", same)
if same:
    shutil.copy(sys.argv[1], man)
PY
fi

# name | extra cbldm-train arguments; VARIANTS="name|args;name|args" replaces the list.
# "noaug" is always packed (the augmentation comparison on measured PDFs needs it), and
# the best of the others by right-shape rate.
# The defaults are what made the shipped model (they were the "final" variant of
# "beta 1e-3, prior 256-512-512, augmentation p 0.5" against global/xattn/beta3 before).
variants=(
    "final|"
    "noaug|--no-augment"
)
if [ -n "${VARIANTS:-}" ]; then IFS=';' read -r -a variants <<<"$VARIANTS"; fi
names=""; for v in "${variants[@]}"; do names="$names ${v%%|*}"; done
export CBLDM_VARIANTS=$names
threads=$(( $(nproc) / ${#variants[@]} )); [ "$threads" -ge 1 ] || threads=1
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads

for v in "${variants[@]}"; do
    name=${v%%|*}; args=${v#*|}
    rm -rf "work/probe-$name"
    python3 -m cbldm.training.cli_train all --data "$data" --out "work/probe-$name" --max-train $probe_n \
        --epochs 2 $args >"work/probe-$name.log" 2>&1 &
done
wait
say "probe done"

# seconds per full epoch of each stage (slowest variant), scaled from the probe
read -r ep_c ep_s ep_d < <(python3 - "$budget" "$SECONDS" $probe_n <<'PY'
import csv, glob, json, os, sys
budget, now, probe_n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
n_train = len(json.load(open(os.path.join(os.environ["CBLDM_DATA"], "manifest.json")))["splits"]["train"])
per = {}
for f in glob.glob("work/probe-*/log.csv"):
    for row in csv.DictReader(open(f)):  # epoch 2 of each stage: start-up costs left out
        if row["epoch"] != "2":
            continue
        per[row["stage"]] = max(per.get(row["stage"], 0.0), float(row["seconds"]) * n_train / probe_n)
left = budget - now - 120           # latents evaluation, head refit, packing, start-up, margin
share = {"condition": 0.12, "structure": 0.33, "denoiser": 0.55}
cap = {"condition": 30, "structure": 60, "denoiser": 200}
ep = {s: max(1, min(cap[s], int(share[s] * left / per[s]))) for s in share}
print(f"per-epoch s {per}; budget left {left:.0f} s -> epochs {ep}", file=sys.stderr)
print(ep["condition"], ep["structure"], ep["denoiser"])
PY
)
say "epochs condition $ep_c, structure $ep_s, denoiser $ep_d"

deadline=$(( budget - 75 ))
for v in "${variants[@]}"; do
    name=${v%%|*}; args=${v#*|}
    rm -rf "work/$name"
    timeout $(( deadline - SECONDS )) python3 -m cbldm.training.cli_train all --data "$data" --out "work/$name" \
        --epochs "$ep_c,$ep_s,$ep_d" --seed 0 $args >"work/$name.train.log" 2>&1 &
done
wait
say "training done"
for v in "${variants[@]}"; do
    name=${v%%|*}
    python3 -m cbldm.training.cli_eval latents --model "work/$name" --data "$data" --split val --device "$device" \
        --out "work/$name" >"work/$name.latents.log" 2>&1 &
done
wait
say "latents evaluated"

python3 - "$out" <<'PY'
import json, os, shutil, subprocess, sys, tarfile
out = sys.argv[1]
docs = {}
names = os.environ["CBLDM_VARIANTS"].split()
for name in names:
    p = f"work/{name}/latents.json"
    if os.path.exists(p):
        docs[name] = json.load(open(p))
        best = max(docs[name]["samplers"], key=lambda r: r["shape_right"])
        print(f"{name:7s} best {best['sampler']:28s} shape right {100 * best['shape_right']:5.1f} %  "
              f"latent RMS {best['latent_rms']:.3f}  (other shape {docs[name]['nearest_other_shape_rms']:.3f})")
    else:
        print(f"{name:7s} no latents.json (training did not finish)")
cands = [n for n in names if n in docs and n != "noaug"]
pick = max(cands, key=lambda n: max(r["shape_right"] for r in docs[n]["samplers"])) if cands else None
print("packing", pick, "and noaug")
with tarfile.open(f"{out}/small.tar.gz", "w:gz") as tar:
    for name in names:
        for f in ("config.json", "log.csv", "latents.json"):
            if os.path.exists(f"work/{name}/{f}"):
                tar.add(f"work/{name}/{f}", f"{name}/{f}")
        for f in (f"work/{name}.train.log", f"work/{name}.latents.log", f"work/probe-{name}.log"):
            if os.path.exists(f):
                tar.add(f, os.path.basename(f))
for name in filter(None, (pick, "noaug")):
    w = f"work/{name}/weights.safetensors"
    if os.path.exists(w):
        os.makedirs(f"{out}/{name}", exist_ok=True)
        subprocess.run(["split", "-b", "15M", "-d", w, f"{out}/{name}/weights.part"], check=True)
        print(name, subprocess.run(["sha256sum", w], capture_output=True, text=True).stdout.split()[0])
PY
say "packed"
