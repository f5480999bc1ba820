# shellcheck shell=bash
# Background jobs of a build script (build-all.sh, ci/main-job.sh): steps
# that do not depend on each other run side by side, e.g. the kernel while
# the rootfs bootstraps. Each job runs in its own session, so stopping it
# stops its whole process tree; its stderr reaches ours with a "[name] "
# prefix (lines already starting with "[" keep theirs) and is kept in a log
# whose tail is the failure report; any exit of the script stops the jobs
# still running. Sourced, after common.sh when that is used too; needs only
# bash and setsid. Job commands must be executables (not shell functions).

declare -A _BG_PID=() _BG_START=() _BG_CMD=()
_BG_DIR=""

_bg_say() { printf '[%s] %s\n' "${STAGE:-${0##*/}}" "$*" >&2; }

# bg_start NAME CMD...: start CMD as job NAME; its stdout is kept for
# bg_result, its stderr is passed on prefixed and logged.
bg_start() {
  local name=$1
  shift
  if [[ -z $_BG_DIR ]]; then
    _BG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/avf-bg.XXXXXX")
  fi
  # A child of a non-interactive shell leads no process group, so setsid
  # does not fork: $! is the session (and group) id that bg_stop_all kills.
  setsid "$@" >"$_BG_DIR/$name.out" \
    2> >(tee "$_BG_DIR/$name.log" | sed -u "/^\[/!s/^/[$name] /" >&2) &
  _BG_PID[$name]=$!
  _BG_START[$name]=$SECONDS
  _BG_CMD[$name]="$*"
  _bg_say "started in the background: $name ($*)"
}

# bg_join NAME: wait for job NAME. On failure prints which step failed, its
# exit status and the tail of its output, and returns the status.
bg_join() {
  local name=$1 pid=${_BG_PID[$1]:-} rc=0
  [[ -n $pid ]] || { _bg_say "error: no background job named '$name'"; return 1; }
  if kill -0 "$pid" 2>/dev/null; then _bg_say "waiting for $name"; fi
  wait "$pid" || rc=$?
  unset '_BG_PID[$name]'
  local took=$((SECONDS - ${_BG_START[$name]}))
  if ((rc != 0)); then
    sleep 0.2 # the prefixing pipe may still be writing the last lines
    _bg_say "error: background step '$name' failed (exit $rc) after $took s: ${_BG_CMD[$name]}"
    _bg_say "last lines of its output:"
    tail -n 25 "$_BG_DIR/$name.log" | sed 's/^/    /' >&2
    return "$rc"
  fi
  _bg_say "$name done ($took s since its start)"
}

# bg_result NAME: the last line of a joined job's stdout.
bg_result() { tail -n1 "$_BG_DIR/$1.out"; }

# bg_stop_all: stop every job not joined yet (TERM to its session, KILL
# after 10 s), then remove the logs.
bg_stop_all() {
  local name pid i
  for name in "${!_BG_PID[@]}"; do
    pid=${_BG_PID[$name]}
    kill -0 "$pid" 2>/dev/null || continue
    _bg_say "stopping background step '$name'"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  _BG_PID=()
  if [[ -n $_BG_DIR ]]; then rm -rf "$_BG_DIR"; fi
  return 0
}

# Stop the jobs on any exit, then run the EXIT trap that was set before
# (common.sh's temp-dir cleanup). INT and TERM become exits so it runs.
_BG_PREV_EXIT=$(trap -p EXIT)
_BG_PREV_EXIT=${_BG_PREV_EXIT#trap -- }
_BG_PREV_EXIT=${_BG_PREV_EXIT% EXIT}
eval "_BG_PREV_EXIT=${_BG_PREV_EXIT:-''}"
# (Returns 0: the script's exit status stands, and no ERR trap fires.)
_bg_on_exit() {
  bg_stop_all
  if [[ -n $_BG_PREV_EXIT ]]; then eval "$_BG_PREV_EXIT"; fi
  return 0
}
trap _bg_on_exit EXIT
trap '_bg_say "interrupted (SIGINT)"; exit 130' INT
trap '_bg_say "stopped (SIGTERM)"; exit 143' TERM
