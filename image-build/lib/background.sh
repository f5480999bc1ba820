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

# A failure ends with one line "<stage>: error: <cause>" (image-build/README),
# though jobs run beside the step that failed and print while they are
# stopped. So all of the script's stderr, the jobs' included, passes one
# relay that, once such a line has passed, lets only such lines through.
# It ignores INT and TERM: it ends when the last writer closes, and nobody
# writing to it on the way out meets a closed pipe.
_bg_relay() {
  trap '' INT TERM
  local line failed=0 cause='^[^][:space:]]+: error: '
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ $cause ]]; then
      failed=1
    elif ((failed)); then
      continue
    fi
    printf '%s\n' "$line" >&2
  done
}
exec 2> >(_bg_relay)
_BG_RELAY_PID=$!

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
  # The job notes its own duration: it may end long before it is joined.
  # shellcheck disable=SC2016 # expanded by the job's shell
  setsid bash -c '"$@"; rc=$?; echo "$SECONDS" >"$0"; exit "$rc"' "$_BG_DIR/$name.took" "$@" \
    >"$_BG_DIR/$name.out" 2> >(tee "$_BG_DIR/$name.log" | sed -u "/^\[/!s/^/[$name] /" >&2) &
  _BG_PID[$name]=$!
  _BG_START[$name]=$SECONDS
  # Until setsid has run, the job's group is ours and a stop would miss it
  # (seen on a loaded host): wait for it to lead its own group.
  local i
  for ((i = 0; i < 300; i++)); do
    _bg_leads_group "$!" && break
    sleep 0.02
  done
  _BG_CMD[$name]="$*"
  _bg_say "started in the background: $name ($*)"
}

# _bg_leads_group PID: true once PID is its process group's leader (or gone).
_bg_leads_group() {
  local stat pgrp
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) } # after the command name, which may hold spaces
  read -r _ _ pgrp _ <<<"$stat"
  [[ $pgrp == "$1" ]]
}

# bg_join NAME...: wait for the jobs, in the order they end. The first
# that fails is reported at once (the tail of its output, then one line
# naming it: the stage's error line) and its status returned; the others
# are left to bg_stop_all.
bg_join() {
  local -A left=()
  local name pid running=() rc took
  for name; do
    pid=${_BG_PID[$name]:-}
    [[ -n $pid ]] || { _bg_say "no background job named '$name'"; return 1; }
    left[$pid]=$name
    if kill -0 "$pid" 2>/dev/null; then running+=("$name"); fi
  done
  ((${#running[@]} == 0)) || _bg_say "waiting for ${running[*]}"
  while ((${#left[@]})); do
    rc=0
    wait -n -p pid "${!left[@]}" || rc=$?
    name=${left[$pid]}
    unset "left[$pid]" "_BG_PID[$name]"
    took=$(cat "$_BG_DIR/$name.took" 2>/dev/null) || took=$((SECONDS - ${_BG_START[$name]}))
    if ((rc != 0)); then
      sleep 0.2 # the prefixing pipe may still be writing the last lines
      _bg_say "the last lines of background step '$name':"
      tail -n 25 "$_BG_DIR/$name.log" | sed 's/^/    /' >&2
      printf '%s: error: background step %s failed (exit %d, after %d s): %s\n' \
        "${STAGE:-${0##*/}}" "$name" "$rc" "$took" "${_BG_CMD[$name]}" >&2
      return "$rc"
    fi
    _bg_say "$name done in $took s (joined $((SECONDS - ${_BG_START[$name]})) s after its start)"
  done
}

# bg_result NAME: the last line of a joined job's stdout.
bg_result() { tail -n1 "$_BG_DIR/$1.out"; }

# bg_stop_all: stop every job not joined yet (TERM to its session, KILL
# after 5 s), then remove the logs.
bg_stop_all() {
  local name pid i
  for name in "${!_BG_PID[@]}"; do
    pid=${_BG_PID[$name]}
    kill -0 "$pid" 2>/dev/null || continue
    _bg_say "stopping background step '$name'"  # (after a failure, the relay drops it)
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true # never wait on a job that missed the above
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
  # Our last lines are out before our caller's next ones.
  exec 2>&-
  wait "$_BG_RELAY_PID" 2>/dev/null || true
  return 0
}
trap _bg_on_exit EXIT
trap '_bg_say "interrupted (SIGINT)"; exit 130' INT
trap '_bg_say "stopped (SIGTERM)"; exit 143' TERM
