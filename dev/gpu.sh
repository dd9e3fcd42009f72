#!/usr/bin/env bash
# Train the default model's recipe on a GPU machine reached through a job runner (Python 3.12 with its own
# torch and transformers 5, nothing downloadable, at most 64 MiB of working tree per call, and an idle
# machine is released after 30 s). Nothing here is part of the package; docs/training.md describes it.
#
# Here:   dev/gpu.sh pack     .gpu/p0 .gpu/p1: the base GGUF in parts; .gpu/p2: its last part, the pins as
#                             cp312 wheels, the train/valid files of the four sets (no test file travels)
# There, one call each, back to back; each names its part in `carry`:
#   bash dev/gpu.sh stash p0
#   bash dev/gpu.sh stash p1
#   bash dev/gpu.sh stash p2 && bash dev/gpu.sh setup && bash dev/gpu.sh s1
#   bash dev/gpu.sh s2 && bash dev/gpu.sh s3
# Each stage writes runs/$RUN/sN there and tars it (checkpoints left out) into $OUT/sN.tar.0, .1; here
# `cat sN.tar.* | tar x -C runs/$RUN` from the folder the files came back to.
# The stages' time limits (minutes) are S1MIN, S2MIN, S3MIN; SWAP is the share of pairs shown B/A. The
# defaults fit a 15-minute GPU slot: a start (1-2 min), two short calls, then about 5 and 7.5 minutes for
# the last two calls (a stage also loads the model and evaluates beyond its limit).
# A check on a CPU: the three stashes, then `PYTHON=.venv/bin/python OUT=/tmp/o S1ARGS="--max-steps 2 --limit 64
# --eval-limit 8" dev/gpu.sh s1` (setup's pip step fails here: the wheels are for Python 3.12; its base step runs).
set -euo pipefail
cd "$(dirname "$0")/.."

STORE=${STORE:-/tmp/epm}                       # parts, wheels and data on the device, outside the tree
export EPM_EDGE_HOME=${EPM_EDGE_HOME:-$STORE/home}
RUN=${RUN:-gpu21}
SWAP=${SWAP:-0.5}
BASE=SmolLM2-135M-Instruct.Q4_1.gguf
SETS="abt_buy amazon_google walmart_amazon wdc_products"
WHEELS="transformers tokenizers huggingface-hub trl peft datasets gguf dill multiprocess fsspec"
PART=42000000  # bytes of the base per part: with the tracked files (21 MB) each call stays under 64 MiB

train() {
    local data
    data=$(for s in $SETS; do printf '%s,' "$STORE/data/$s"; done | sed 's/,$//')
    PYTHONPATH=$STORE/site${PYTHONPATH:+:$PYTHONPATH} ${PYTHON:-python3} -m epm_edge train "$@" --data "$data"
}

finish() {  # the stage's adapter and its record, without checkpoints, in pieces: $OUT takes 16 MiB a file
    tar -C runs/$RUN -cf - --exclude=checkpoints "$1" | split -b 15000000 -d -a 1 - "$OUT/$1.tar."
    ls -la "$OUT"
}

case ${1:?usage: dev/gpu.sh pack|stash PART|setup|s1|s2|s3} in
pack)
    rm -rf .gpu && mkdir -p .gpu/p0 .gpu/p1 .gpu/p2/whl .gpu/p2/data
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
    base=$(.venv/bin/python -c "from epm_edge.model_store import packaged_base_gguf; print(packaged_base_gguf())")
    split -b $PART -d -a 1 "$base" .gpu/base.
    mv .gpu/base.0 .gpu/p0/ && mv .gpu/base.1 .gpu/p1/ && mv .gpu/base.2 .gpu/p2/
    for name in $WHEELS; do
        version=$(.venv/bin/pip show "$name" | sed -n 's/^Version: //p')
        .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .gpu/p2/whl "$name==$version"
    done
    for s in $SETS; do
        mkdir -p .gpu/p2/data/$s
        for f in ../shared/data/$s/{tableA,tableB,train,valid,rationales_gpt4}.csv; do
            if [ -e "$f" ]; then cp "$f" .gpu/p2/data/$s/; fi
        done
    done
    du -sh .gpu/*
    ;;
stash)
    mkdir -p "$STORE" && cp -r .gpu/"$2"/. "$STORE"/
    ls "$STORE"
    ;;
setup)
    mkdir -p "$EPM_EDGE_HOME/base"
    cat "$STORE"/base.0 "$STORE"/base.1 "$STORE"/base.2 > "$EPM_EDGE_HOME/base/$BASE"
    # the digest model_store checks; with its .sha256 beside it the file is taken as the bundled base
    digest=$(${PYTHON:-python3} -c "import epm_edge.model_store as m; print(m.BASE_SHA256)")
    echo "$digest  $EPM_EDGE_HOME/base/$BASE" | sha256sum -c
    echo "$digest" > "$EPM_EDGE_HOME/base/${BASE%.gguf}.sha256"
    ${PYTHON:-python3} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STORE/site" \
        "$STORE"/whl/*.whl
    nvidia-smi --query-gpu=name,memory.total --format=csv || true
    ;;
s1)  # label-only SFT on every train pair
    train sft --label-only --neg-ratio 10 --swap "$SWAP" --out runs/$RUN/s1 --epochs 2 --lr 3e-4 --rank 32 \
        --decision-weight 1 --batch-size 64 --grad-accum 1 --eval-steps 150 --eval-limit 1000 \
        --time-limit "${S1MIN:-4}" ${S1ARGS:-}
    finish s1
    ;;
s2)  # rationale SFT: the PEFT-only candidate
    train sft --neg-ratio 3 --max-per-set 4000 --seed 1 --swap "$SWAP" --init runs/$RUN/s1 --out runs/$RUN/s2 \
        --lr 1e-4 --batch-size 64 --grad-accum 1 --eval-steps 50 --eval-limit 1000 --decision-weight 40 --epochs 3 \
        --time-limit "${S2MIN:-3.5}" ${S2ARGS:-}
    finish s2
    ;;
s3)  # GRPO with the agent-based reward: the PEFT+RL candidate
    train rl --max-per-set 2000 --neg-ratio 1.5 --seed 3 --init runs/$RUN/s2 --out runs/$RUN/s3 \
        --batch-size 64 --num-generations 4 --max-completion-length 80 --lr 2e-5 --save-steps 25 --max-steps 300 \
        --time-limit "${S3MIN:-2.5}" ${S3ARGS:-}
    finish s3
    ;;
*) echo "unknown step: $1" >&2; exit 2 ;;
esac
