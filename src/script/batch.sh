# shellcheck shell=bash
# The values are set above this text (SC2154); the epilogue and the signal
# handlers run from traps (SC2317).
# shellcheck disable=SC2154,SC2317
# The body of every batch script firecrest-ci submits. firecrest-ci renders
# `#!/bin/bash -l`, the `#SBATCH` lines and the values below above this text
# (src/script/mod.rs), each value single-quoted so that nothing in it is ever
# expanded:
#
#   _fci_run_dir            absolute run directory (mode 0700)
#   _fci_archive            the workspace archive, inside the run directory
#   _fci_parts              its parts, in order (one part: the archive itself)
#   _fci_sha256             the archive's SHA-256
#   _fci_env_file           forwarded variables to source and delete ('' for none)
#   _fci_artifacts          artifact patterns, relative to the workspace
#   _fci_artifacts_archive  where the epilogue writes the artifacts
#   _fci_artifacts_part_size  split the artifacts archive above this size ('' never)
#   _fci_workspace          directory the archive is extracted into
#   _fci_marker             written once the workspace is extracted
#   _fci_keep_archive       1: keep the archive's parts for a later attempt
#   _fci_ready_file         submitted while the last parts went up: wait for
#                           this file to hold _fci_sha256 ('' : all are up)
#   _fci_ready_within       seconds to wait for it before failing
#   _fci_invalid            exit status for a missing or corrupt workspace
#   _fci_kill_after         seconds the commands get after a signal before SIGKILL
#   _fci_mode               inline (commands in _fci_commands) or script (_fci_script)
#   _fci_commands           where _fci_write_commands writes the inline commands
#   _fci_script             the script file in the workspace to run
#   _fci_output_file        exported as FIRECREST_CI_OUTPUT (step outputs)
#   _fci_summary_file       exported as FIRECREST_CI_SUMMARY (step summary)
#
# Three parts: a prologue (enter the run directory, load the forwarded
# variables, reassemble, verify and extract the workspace), the user's
# commands, and an epilogue (an EXIT trap) that packs the artifacts.
#
# The commands run in the background in a process group of their own, and
# the shell waits for them. Slurm signals the batch shell at the time limit
# and on scancel; a shell that waited in the foreground would run its trap
# only once the commands ended on their own, which they never do, so the
# epilogue would be lost to KillWait's SIGKILL. Waiting in the background,
# the trap runs at once, forwards the signal to the commands' group, and
# SIGKILLs the group after _fci_kill_after seconds if it is still there.
#
# Lines the tool reads in the output (src/job.rs): "commands exited with
# status N" once the commands ended, and "end of the batch script" as the
# very last line, once the epilogue is done.

# Submitted with --export=NONE (or through FirecREST), Slurm would pass that
# on to srun; job steps should see what this login shell set up (modules).
unset SLURM_EXPORT_ENV
_fci_ready=0
_fci_signal=
_fci_child=
_fci_status=
_fci_say() { printf 'firecrest-ci: %s\n' "$*"; }
_fci_warn() { printf 'firecrest-ci: warning: %s\n' "$*" >&2; }
_fci_fail() { printf 'firecrest-ci: error: %s\n' "$*" >&2; exit "$_fci_invalid"; }

# Epilogue: pack the artifacts. Patterns are expanded by bash in the
# workspace (no word splitting, never eval'd); a path inside a matched
# directory is dropped because tar packs directories whole.
_fci_pack_artifacts() {
  local IFS= _fci_pattern _fci_m _fci_a _fci_any _fci_inside _fci_rc
  local -a _fci_found=() _fci_keep=() _fci_matches=()
  local -A _fci_seen=()
  if ((BASH_VERSINFO[0] < 4)); then _fci_warn "packing artifacts needs bash 4 or newer, this is bash $BASH_VERSION"; return; fi
  cd -- "$_fci_run_dir/$_fci_workspace" 2>/dev/null || { _fci_warn "the workspace is gone; no artifacts packed"; return; }
  set +f
  shopt -s nullglob globstar dotglob
  for _fci_pattern in "${_fci_artifacts[@]}"; do
    _fci_any=0
    # shellcheck disable=SC2206  # the pattern is meant to glob (IFS is empty: no splitting)
    _fci_matches=( $_fci_pattern )
    for _fci_m in "${_fci_matches[@]}"; do
      [ -e "$_fci_m" ] || [ -L "$_fci_m" ] || continue
      while [[ $_fci_m == ./* ]]; do _fci_m=${_fci_m#./}; done
      while [[ $_fci_m == */ ]]; do _fci_m=${_fci_m%/}; done
      case "/$_fci_m/" in */../*) continue ;; esac
      if [ -z "$_fci_m" ] || [ "$_fci_m" = . ]; then _fci_m=.; else _fci_m=./$_fci_m; fi
      _fci_any=1
      [ -n "${_fci_seen[$_fci_m]+x}" ] && continue
      _fci_seen[$_fci_m]=1
      _fci_found+=("$_fci_m")
    done
    [ "$_fci_any" = 1 ] || _fci_warn "artifact pattern '$_fci_pattern' matched nothing"
  done
  for _fci_m in "${_fci_found[@]}"; do
    _fci_a=$_fci_m
    _fci_inside=0
    while [[ $_fci_a == */* ]]; do
      _fci_a=${_fci_a%/*}
      if [ -n "${_fci_seen[$_fci_a]+x}" ] && [ -d "$_fci_a" ] && [ ! -L "$_fci_a" ]; then _fci_inside=1; break; fi
    done
    [ "$_fci_inside" = 1 ] || _fci_keep+=("$_fci_m")
  done
  if [ "${#_fci_keep[@]}" -eq 0 ]; then
    tar -czf "$_fci_artifacts_archive.partial" -T /dev/null
  else
    tar -czf "$_fci_artifacts_archive.partial" "${_fci_keep[@]}"
  fi
  _fci_rc=$?
  # GNU tar exits 1 when a file changed while it was read: the archive is still whole.
  if [ "$_fci_rc" -gt 1 ] || ! mv -f -- "$_fci_artifacts_archive.partial" "$_fci_artifacts_archive"; then
    rm -f -- "$_fci_artifacts_archive.partial"
    _fci_warn "could not pack the artifacts (tar exit status $_fci_rc)"
    return
  fi
  if [ -n "$_fci_artifacts_part_size" ] && [ "$(wc -c < "$_fci_artifacts_archive")" -gt "$_fci_artifacts_part_size" ]; then
    split -b "$_fci_artifacts_part_size" -d -a 5 -- "$_fci_artifacts_archive" "$_fci_artifacts_archive.part-" \
      || _fci_warn "could not split the artifacts archive into parts"
  fi
  if [ "${#_fci_keep[@]}" -eq 1 ]; then _fci_say "artifacts packed (1 path)"; else _fci_say "artifacts packed (${#_fci_keep[@]} paths)"; fi
}

# Runs on every exit: after the commands, after `exit`, after a signal.
_fci_finish() {
  local _fci_rc=$?
  trap '' TERM INT HUP
  trap - EXIT
  if [ "$_fci_ready" = 1 ]; then
    if [ -n "$_fci_signal" ]; then
      _fci_say "stopped by SIG$_fci_signal (time limit or cancellation)"
    fi
    _fci_say "commands exited with status $_fci_rc"
    [ "${#_fci_artifacts[@]}" -gt 0 ] && _fci_pack_artifacts
  fi
  _fci_say "end of the batch script (exit status $_fci_rc)"
  exit "$_fci_rc"
}
trap _fci_finish EXIT
# Until the commands run, a signal ends the script at once (the prologue's
# own commands are short).
trap '_fci_signal=TERM; exit 143' TERM
trap '_fci_signal=INT; exit 130' INT
trap '_fci_signal=HUP; exit 129' HUP

cd -- "$_fci_run_dir" 2>/dev/null || _fci_fail "cannot enter the run directory $_fci_run_dir"
_fci_say "job ${SLURM_JOB_ID:-(local)} on ${SLURMD_NODENAME:-${HOSTNAME:-this machine}}"

if [ -n "$_fci_env_file" ]; then
  if [ -f "$_fci_env_file" ]; then
    # shellcheck disable=SC1090  # written by firecrest-ci into the run directory
    . "./$_fci_env_file"
    rm -f -- "./$_fci_env_file"
    _fci_say "forwarded variables set"
  elif [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
    _fci_warn "the job was requeued: forwarded variables were deleted at its first start and are not set"
  else
    _fci_fail "the forwarded-variables file $_fci_env_file is missing from $_fci_run_dir"
  fi
fi

# The SHA-256 of standard input, in hex.
_fci_sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum | cut -d ' ' -f 1
  else
    shasum -a 256 | cut -d ' ' -f 1
  fi
}
# Reassembles, checks and extracts the workspace in one pass: the parts go
# through `tee` to the checksum and to tar, which is drained so that tee
# always passes every byte on. The marker is written only once the checksum
# matched and tar succeeded; on a mismatch the extracted tree is removed.
_fci_extract() {
  local _fci_sum="$_fci_archive.sha256" _fci_got=
  local -a _fci_rc
  rm -f -- "$_fci_sum" "$_fci_sum.partial"
  cat -- "${_fci_parts[@]}" \
    | tee >(_fci_sha256 > "$_fci_sum.partial" && mv -f -- "$_fci_sum.partial" "$_fci_sum") \
    | { tar -xzf - -C "$_fci_workspace"; _fci_t=$?; cat > /dev/null; exit "$_fci_t"; }
  _fci_rc=("${PIPESTATUS[@]}")
  wait "$!" 2>/dev/null
  # bash before 4.4 cannot wait for a process substitution: give it 30 s.
  for _ in $(seq 300); do [ -f "$_fci_sum" ] && break; sleep 0.1; done
  [ -f "$_fci_sum" ] && _fci_got=$(cat -- "$_fci_sum")
  rm -f -- "$_fci_sum" "$_fci_sum.partial"
  [ "${_fci_rc[0]}" -eq 0 ] || _fci_fail "cannot read the workspace archive's ${#_fci_parts[@]} parts"
  if [ "$_fci_got" != "$_fci_sha256" ]; then
    rm -rf -- "$_fci_workspace"
    _fci_fail "the workspace archive is corrupt: its SHA-256 does not match the uploaded archive's"
  fi
  [ "${_fci_rc[2]}" -eq 0 ] || _fci_fail "cannot extract the workspace archive (see tar's message above)"
}
if [ -f "$_fci_marker" ] && [ -d "$_fci_workspace" ]; then
  _fci_say "job restarted: reusing the workspace extracted at its first start"
else
  if [ -n "$_fci_ready_file" ]; then
    # Submitted while the last parts went up: firecrest-ci writes the
    # archive's SHA-256 into this file once every part is up (a placeholder
    # until then, so that the file is opened, and read anew, each time).
    # Counted in tenths of a second: a login profile may unset SECONDS.
    _fci_tenths=$((_fci_ready_within * 10))
    _fci_waiting=0
    until [ "$(cat -- "$_fci_ready_file" 2>/dev/null)" = "$_fci_sha256" ]; do
      [ "$_fci_tenths" -gt 0 ] \
        || _fci_fail "the workspace upload did not finish within ${_fci_ready_within}s of the job's start ($_fci_run_dir/$_fci_ready_file does not hold the archive's SHA-256)"
      [ "$_fci_waiting" = 1 ] || { _fci_say "waiting for the last parts of the workspace upload"; _fci_waiting=1; }
      sleep 0.1
      _fci_tenths=$((_fci_tenths - 1))
    done
  fi
  for _fci_p in "${_fci_parts[@]}"; do
    [ -f "$_fci_p" ] || _fci_fail "workspace archive part $_fci_p is missing: the upload did not complete"
  done
  { rm -rf -- "$_fci_workspace" && mkdir -- "$_fci_workspace"; } || _fci_fail "cannot create $_fci_run_dir/$_fci_workspace"
  _fci_extract
  : > "$_fci_marker"
  # A later attempt (a retry after the cluster lost the job) extracts them again.
  [ "$_fci_keep_archive" = 1 ] || rm -f -- "${_fci_parts[@]}"
  _fci_files=$(find "$_fci_workspace" -type f -print0 | tr -cd '\0' | wc -c)
  _fci_say "workspace ready ($((_fci_files)) files)"
fi
cd -- "$_fci_workspace" || _fci_fail "cannot enter $_fci_run_dir/$_fci_workspace"

if [ "$_fci_mode" = inline ]; then
  _fci_write_commands > "$_fci_commands" || _fci_fail "cannot write the commands file in $_fci_run_dir"
fi

# Files the commands may append to, as a GitHub step does to $GITHUB_OUTPUT
# and $GITHUB_STEP_SUMMARY: the tool reads them back after the job.
export FIRECREST_CI_OUTPUT="$_fci_output_file" FIRECREST_CI_SUMMARY="$_fci_summary_file"
{ : >> "$FIRECREST_CI_OUTPUT" && : >> "$FIRECREST_CI_SUMMARY"; } || _fci_fail "cannot create the output files in $_fci_run_dir"

# The user's commands: inline ones like a GitHub `run:` block (`set -eo
# pipefail`, `exit N` ends the block with N), a script file as a program
# (its `#!` line, else bash).
_fci_run_commands() {
  set -eo pipefail
  if [ "$_fci_mode" = inline ]; then
    # shellcheck disable=SC1090  # the user's commands
    . "$_fci_commands"
    exit
  fi
  if [ ! -f "./$_fci_script" ]; then
    printf 'firecrest-ci: error: the script file %s is not in the workspace\n' "$_fci_script" >&2
    exit 127
  fi
  local _fci_head=
  IFS= read -r -n 2 _fci_head < "./$_fci_script" || true
  if [ "$_fci_head" = '#!' ]; then
    [ -x "./$_fci_script" ] || chmod u+x -- "./$_fci_script"
    exec "./$_fci_script"
  fi
  exec bash "./$_fci_script"
}

# A signal while the commands run: pass it on to their process group; the
# loop below then gives them _fci_kill_after seconds before SIGKILL. A signal
# that comes before the commands started is passed on once they have.
_fci_forward() {
  _fci_signal=$1
  _fci_interrupted=1
  [ -n "$_fci_child" ] || return 0
  kill -s "$1" -- "-$_fci_child" 2>/dev/null || kill -s "$1" "$_fci_child" 2>/dev/null
}
# USR1 and USR2 (`--signal=B:USR1@60` warnings) pass through to the
# commands' shell alone, as Slurm's B: option means, and end nothing.
_fci_pass() {
  _fci_interrupted=1
  [ -n "$_fci_child" ] || return 0
  kill -s "$1" "$_fci_child" 2>/dev/null
}

_fci_ready=1
trap '_fci_forward TERM' TERM
trap '_fci_forward INT' INT
trap '_fci_forward HUP' HUP
trap '_fci_pass USR1' USR1
trap '_fci_pass USR2' USR2
set -m
_fci_run_commands &
_fci_child=$!
set +m
[ -z "$_fci_signal" ] || _fci_forward "$_fci_signal"
while :; do
  _fci_interrupted=0
  wait "$_fci_child"
  _fci_status=$?
  [ "$_fci_interrupted" = 1 ] || break
  if [ -n "$_fci_signal" ]; then
    _fci_until=$((SECONDS + _fci_kill_after))
    while kill -0 "$_fci_child" 2>/dev/null && [ "$SECONDS" -lt "$_fci_until" ]; do sleep 0.1; done
    if kill -0 "$_fci_child" 2>/dev/null; then
      _fci_warn "the commands did not stop within ${_fci_kill_after}s of SIG$_fci_signal: killing them"
      kill -s KILL -- "-$_fci_child" 2>/dev/null || kill -s KILL "$_fci_child" 2>/dev/null
    fi
  fi
done
exit "$_fci_status"
