#!/usr/bin/env bash
# The recipe sweep of the bundled model (MODEL_CARD.md, "How the recipe was chosen"), on one GPU machine:
# the candidates of a round train in parallel, 2 CPU threads each.
# Usage: bash scripts/bundled_sweep.sh OUT_DIR ROUND
#   ROUND 2, 3, 4 (the rounds that chose the shipped recipe, 6-8 minutes on an H100): OUT_DIR/<name>.json and the
#     models in OUT_DIR/<name>/. Neuron scores: score_neurons() in bundled_sweep.py, or bundled_ground_truth.py.
#   ROUND 5 (default; issue 18, heatmaps that localise): six further stage-3 runs of the shipped model, five with the
#     patch-word loss and one without (the control), beside the shipped model scored as it is; ROUND 6: the full
#     recipe from scratch with the patch-word loss. Each candidate is trained under $WORK (default
#     /tmp/bundled_sweep<ROUND>) and stopped after LIMIT seconds (default 480, so that a round ends within 9
#     minutes); OUT_DIR receives at most 8 files: summary.json (each candidate's caption exact-match rate, MCQA
#     accuracy, localisation = share of its top-100 heatmap masks on the object, against the goal; ranked), sweep.log,
#     and per trained candidate <name>.tar.gz (the saved model <name>/, <name>.json with every score, <name>.log).
#   TINY=1: the same rounds on the CPU with a few steps and images (a smoke test of the whole pipeline, minutes).
# Runs from any folder (it changes to the repository root and puts src/ on PYTHONPATH); PYTHON picks the interpreter.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
out=${1:-/tmp/sweep}
round=${2:-5}
limit=${LIMIT:-480}
mkdir -p "$out"
mix5="--text-mix 0.15 0.35 0.15 0.15 0.2"
match="--text-mix 0.1 0.3 0.3 0.1 0.2"
relu="--hidden-act relu --activation-l1 0.3"
shipped="src/neuronscope/bundled/shapes_vlm"
run() {
  local name=$1; shift
  $python scripts/bundled_sweep.py --out "$out" --name "$name" --device cuda --images 0 "$@" \
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
  5|6)  # issue 18: the patch-word loss in stage 3 (weight after pw, 03 = 0.3), scored for localisation
    dest=$out; out=${WORK:-/tmp/bundled_sweep$round}; rm -rf "$out"; mkdir -p "$out"
    if [ "${TINY:-0}" = 1 ]; then  # CPU smoke test: few steps, few images, one candidate at a time
      device=cpu; scale() { echo 3; }; scoring="--eval-images 4 --loc-images 8 --threads 1"; bg=""
    else
      device=cuda; scale() { echo "$1"; }; scoring="--eval-images 200 --loc-images 48"; bg="&"
    fi
    run() {
      local name=$1; shift
      local command=(timeout "$limit" $python scripts/bundled_sweep.py --out "$out" --name "$name" --device "$device"
                     --images 0 $scoring "$@")
      if [ -n "$bg" ]; then "${command[@]}" > "$out/$name.log" 2>&1 & else "${command[@]}" > "$out/$name.log" 2>&1; fi
      echo "started $name: $*"
    }
    again="--init-from $shipped --vision-steps 0 --text-steps 0"  # a further stage 3 of the shipped model
    fresh="--vision-steps $(scale 1000) --text-steps $(scale 3000)"  # the shipped recipe's stages 1 and 2
    {
      date -u
      if [ "$round" = 5 ]; then
        run shipped --score "$shipped"
        run ft_pw0_1000 $again --steps "$(scale 1000)" --patch-word-loss 0
        run ft_pw03_1000 $again --steps "$(scale 1000)" --patch-word-loss 0.3
        run ft_pw1_1000 $again --steps "$(scale 1000)" --patch-word-loss 1
        run ft_pw3_1000 $again --steps "$(scale 1000)" --patch-word-loss 3
        run ft_pw1_2000 $again --steps "$(scale 2000)" --patch-word-loss 1
        run ft_pw1_300 $again --steps "$(scale 300)" --patch-word-loss 1  # as results/bundled/localisation_ft_pw1_300_cpu.json
      else
        run sc_pw1_s1 $fresh --steps "$(scale 1000)" --patch-word-loss 1 --seed 1
        run sc_pw03_s1 $fresh --steps "$(scale 1000)" --patch-word-loss 0.3 --seed 1
        run sc_pw3_s1 $fresh --steps "$(scale 1000)" --patch-word-loss 3 --seed 1
        run sc_pw1_s0 $fresh --steps "$(scale 1000)" --patch-word-loss 1 --seed 0
        run sc_pw1_s2 $fresh --steps "$(scale 1000)" --patch-word-loss 1 --seed 2
      fi
      wait
      date -u
      for log in "$out"/*.log; do echo "== $log"; tail -n 2 "$log"; done
      $python scripts/bundled_sweep.py --collect "$out" "$dest"
    } 2>&1 | tee "$dest/sweep.log"
    exit "${PIPESTATUS[0]}" ;;
  *) echo "unknown round $round (2, 3, 4, 5 or 6)" >&2; exit 2 ;;
esac
wait
