#!/usr/bin/env bash
# The MQAR state-size grid (issue #25): Zoology's Figure 2 / Based's Figure 2 (accuracy against recurrent state size) at
# CPU scale. One `ssmkit sweep` per mixer recipe of recipes/mqar/, over model.d_model and, for the mixers that have one,
# model.mixer.d_state (`ssmkit sweep` takes its grid as key=v1,v2 arguments: this file is that grid, written down).
#
#   recipes/mqar/sweep-state.sh --processes 2                 # the CPU grid measured in docs/results.md
#   GRID=full recipes/mqar/sweep-state.sh --processes 4       # zoology's widths and Based's d_state values (GPUs)
#   MIXERS="attn mamba" recipes/mqar/sweep-state.sh           # a subset
#   D_MODEL=64 MIXERS=hyena recipes/mqar/sweep-state.sh       # other widths (D_STATE_LTI / D_STATE_SELECTIVE likewise)
#   python scripts/plot_mqar.py runs/sweeps/mqar --out mqar-state.png     # table + plot of every finished run
#
# Arguments after the script name go to every `ssmkit sweep` (--processes N, --seeds N, --force ...). Each mixer's runs
# land in $SWEEPS/<mixer>/<point>-seed<k> (SWEEPS defaults to runs/sweeps/mqar); re-running resumes and skips finished runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
SWEEPS=${SWEEPS:-runs/sweeps/mqar}
MIXERS=${MIXERS:-attn s4d s5 lru mamba mamba2 gla gated_deltanet hyena rglru}
SSMKIT=${SSMKIT:-ssmkit}
case "${GRID:-cpu}" in
  cpu)   # 2 widths per mixer, each recipe's own d_state: 20 runs of 1500 steps
    D_MODEL=${D_MODEL:-32,64}; D_STATE_LTI=${D_STATE_LTI:-}; D_STATE_SELECTIVE=${D_STATE_SELECTIVE:-} ;;
  full)  # Zoology Fig. 2 widths; Based Fig. 2's d_state 8/16/24 for the selective SSMs; S4D/S5/LRU 16..256
    D_MODEL=${D_MODEL:-64,128,256,512}; D_STATE_LTI=${D_STATE_LTI:-16,64,256}; D_STATE_SELECTIVE=${D_STATE_SELECTIVE:-8,16,24} ;;
  *) echo "error: GRID must be cpu or full, got ${GRID}" >&2; exit 2 ;;
esac
for mixer in $MIXERS; do
  recipe=recipes/mqar/$mixer.yaml
  [ -f "$recipe" ] || { echo "error: no recipe $recipe; choose among: $(ls recipes/mqar/*.yaml | xargs -n1 basename | sed 's/.yaml//' | tr '\n' ' ')" >&2; exit 2; }
  axes=("model.d_model=$D_MODEL")
  case "$mixer" in
    s4d|s5|lru)     [ -n "$D_STATE_LTI" ] && axes+=("model.mixer.d_state=$D_STATE_LTI") ;;
    mamba|mamba2)   [ -n "$D_STATE_SELECTIVE" ] && axes+=("model.mixer.d_state=$D_STATE_SELECTIVE") ;;
  esac
  echo "== $mixer: $SSMKIT sweep $recipe ${axes[*]} --dir $SWEEPS/$mixer $*"
  "$SSMKIT" sweep "$recipe" "${axes[@]}" --dir "$SWEEPS/$mixer" "$@"
done
