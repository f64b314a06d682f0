# Shared helpers for the recipes: `--name value` option parsing and stage banners.
# Source it after defining defaults; every `--foo bar` on the command line sets the variable foo.

parse_options() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
      --*=*) local kv="${1#--}"; local name="${kv%%=*}"; shift; set -- "--$name" "${kv#*=}" "$@" ;;
      --*)
        local name="${1#--}"
        if ! declare -p "$name" >/dev/null 2>&1; then echo "$0: unknown option --$name" >&2; exit 2; fi
        if [ $# -lt 2 ]; then echo "$0: --$name needs a value" >&2; exit 2; fi
        printf -v "$name" '%s' "$2"; shift 2 ;;
      *) echo "$0: unexpected argument '$1'" >&2; exit 2 ;;
    esac
  done
}

# run_stage N "title": true when stage N is inside [stage, stop_stage]; prints a banner with the time.
# With stage_log set (a file), also appends "N<TAB>epoch seconds<TAB>title" there (stage times for reports).
_recipe_start=$(date +%s)
run_stage() {
  if [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; then
    printf '\n==== stage %s: %s  [%s, +%ss]\n' "$1" "$2" "$(date +%H:%M:%S)" "$(( $(date +%s) - _recipe_start ))"
    if [ -n "${stage_log:-}" ]; then
      mkdir -p "$(dirname "$stage_log")"
      printf '%s\t%s\t%s\n' "$1" "$(date +%s)" "$2" >> "$stage_log"
    fi
    return 0
  fi
  return 1
}

# require FILE "what": stop with one line when an earlier stage's output is missing.
require() {
  [ -e "$1" ] || { echo "$0: missing $2 ($1): run the earlier stages first" >&2; exit 1; }
}

# run_lanes FUNC...: run the functions (or commands) at the same time, each in a subshell with one CPU
# thread (OMP_NUM_THREADS=1), and wait for all; returns the status of the last lane that failed (0 if none).
# For independent single-threaded work (the scorers run one thread each): a second lane uses a second core.
# Each lane is its own process group (set -m), so Ctrl-C or a TERM stops every lane with all it started.
# Call it as a plain command: bash ignores set -e inside a tested `run_lanes ... || ...`, so a lane would
# then run on past a failing command.
run_lanes() {
  local pids=() pid lane rc=0
  set -m
  for lane in "$@"; do
    ( export OMP_NUM_THREADS=1; "$lane" ) &
    pids+=("$!")
  done
  set +m
  trap 'for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done; exit 130' INT TERM
  for pid in "${pids[@]}"; do
    wait "$pid" || rc=$?
  done
  trap - INT TERM
  return "$rc"
}
