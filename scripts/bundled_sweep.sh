#!/usr/bin/env bash
# The recipe sweep of the bundled model (MODEL_CARD.md, "How the recipe was chosen"), on one GPU machine:
# the eight candidates of a round train in parallel, 2 CPU threads each (about 6-8 minutes on an H100).
# Usage: bash scripts/bundled_sweep.sh OUT_DIR ROUND   (ROUND 2, 3 or 4; results: OUT_DIR/<name>.json, models in
# OUT_DIR/<name>/). Neuron scores: score_neurons() in bundled_sweep.py, or scripts/bundled_ground_truth.py --model.
set -u
out=${1:-/tmp/sweep}
round=${2:-4}
mkdir -p "$out"
mix5="--text-mix 0.15 0.35 0.15 0.15 0.2"
match="--text-mix 0.1 0.3 0.3 0.1 0.2"
relu="--hidden-act relu --activation-l1 0.3"
run() {
  local name=$1; shift
  python3 scripts/bundled_sweep.py --out "$out" --name "$name" --device cuda --images 0 "$@" \
    > "$out/$name.log" 2>&1 &
}
case $round in
  2)  # ReLU + L1 on FFN activations, and a longer text stage with the question task (vision 600 steps, all trained)
    run r_s1 --vision-steps 600 --train-vision --text-steps 3000 $mix5 $relu --seed 1
    run r_s2 --vision-steps 600 --train-vision --text-steps 3000 $mix5 $relu --seed 2
    run r_s3 --vision-steps 600 --train-vision --text-steps 3000 $mix5 $relu --seed 3
    run rm_s0 --vision-steps 600 --train-vision --text-steps 3000 $match $relu --seed 0
    run rm_s1 --vision-steps 600 --train-vision --text-steps 3000 $match $relu --seed 1
    run rj_s0 --vision-steps 600 --train-vision --text-steps 2000 --steps 1500 $mix5 $relu --seed 0
    run rj_s2 --vision-steps 600 --train-vision --text-steps 2000 --steps 1500 $mix5 $relu --seed 2
    run silu_s1 --vision-steps 600 --train-vision --text-steps 3000 $mix5 --seed 1 ;;
  3)  # SiLU, no penalty; vision tower trained or fixed in stage 3
    run s_s0 --train-vision --text-steps 3000 $mix5 --seed 0
    run s_s1 --train-vision --text-steps 3000 $mix5 --seed 1
    run s_s2 --train-vision --text-steps 3000 $mix5 --seed 2
    run s_s3 --train-vision --text-steps 3000 $mix5 --seed 3
    run sf_s0 --text-steps 3000 $mix5 --seed 0
    run sf_s1 --text-steps 3000 $mix5 --seed 1
    run sfm_s0 --text-steps 3000 $match --seed 0
    run sfm_s1 --text-steps 3000 $match --seed 1 ;;   # = the defaults of TrainConfig
  4)  # the defaults with other seeds, longer text stages, smaller text batches, a higher learning rate
    run m_s2 --text-steps 3000 $match --seed 2
    run m_s3 --text-steps 3000 $match --seed 3
    run m_s4 --text-steps 3000 $match --seed 4
    run mb_s0 --text-steps 5000 --text-batch 32 $match --seed 0
    run mb_s2 --text-steps 5000 --text-batch 32 $match --seed 2
    run ml_s0 --text-steps 4000 $match --seed 0
    run ml_s2 --text-steps 4000 $match --seed 2
    run mlr_s0 --text-steps 3000 --lr 2e-3 $match --seed 0 ;;
  *) echo "unknown round $round (2, 3 or 4)" >&2; exit 2 ;;
esac
wait
