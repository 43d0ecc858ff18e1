#!/usr/bin/env bash
# Local infrastructure for crm-platform, without docker: a PostgreSQL 15 server
# and a single-node Apache Kafka 4.1.1 broker (KRaft, combined broker+controller).
#
# As a library (other scripts, the test suite):
#     source deploy/local/infra.sh
#     crm_infra_env                      # defaults + CRM_KAFKA_BOOTSTRAP / CRM_PG_DSN_BASE
#     crm_start_postgres crm_profile ... # databases to create if missing
#     crm_start_kafka
#     crm_stop_infra
# As a command:
#     bash deploy/local/infra.sh start [db ...] | stop | status | env
#
# Everything is idempotent: starting what runs, or stopping what does not, is a no-op.
# Settings (environment, all optional):
#     CRM_STATE_DIR              data, logs and pid files   (default $CRM_ROOT/.run)
#     CRM_PG_PORT                PostgreSQL port            (default 55432)
#     CRM_KAFKA_PORT             Kafka PLAINTEXT port       (default 59092)
#     CRM_KAFKA_CONTROLLER_PORT  Kafka KRaft controller port(default 59093)
#     CRM_CACHE_DIR              Kafka jars, survive rm -rf .run (default ~/.cache/crm-platform)
#     KAFKA_HOME                 use an unpacked Kafka distribution's libs/ instead of Maven
#     CRM_KAFKA_HEAP_OPTS        broker heap                (default -Xms256m -Xmx1g)
#     CRM_KAFKA_START_TIMEOUT    seconds to wait for the broker (default 90)
#     CRM_PG_BIN                 PostgreSQL bin directory   (default newest /usr/lib/postgresql/*/bin)
# Two sets (different CRM_STATE_DIR and ports) can run side by side.

CRM_KAFKA_VERSION=4.1.1
CRM_DEFAULT_DATABASES=(crm_profile crm_interaction crm_broadcast crm_recommendation crm_gateway)
# Resolved when the file is read, so it works whatever the caller's cwd is.
CRM__INFRA_SH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CRM__KAFKA_DIR="$(cd "$CRM__INFRA_SH_DIR/../kafka" && pwd)"

# ----------------------------------------------------------------------------- helpers

crm__log() { printf '[infra] %s\n' "$*" >&2; }
crm__die() { printf '[infra] ERROR: %s\n' "$*" >&2; return 1; }

# True when something accepts TCP connections on 127.0.0.1:$1.
crm__port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Best effort description of who listens on 127.0.0.1:$1 (for error messages).
crm__port_owner() {
    local pid
    pid="$(ss -ltnpH "sport = :$1" 2>/dev/null | grep -oE 'pid=[0-9]+' | head -n1 | cut -d= -f2)" || true
    [[ -n "$pid" ]] || return 0
    printf 'Listener: pid %s: %s' "$pid" "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-600)"
}

# True when pid $1 exists and is not a zombie. kill -0 is not enough: a killed
# daemon reparented to PID 1 can linger as a zombie for a moment.
crm__pid_alive() {
    local st
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    st="$(cat 2>/dev/null "/proc/$1/stat")" || return 1
    st="${st##*) }"
    [[ "${st%% *}" != Z ]]
}

# True when pid $1 is alive and its command line (arguments joined by spaces,
# with a trailing space) contains $2.
crm__pid_matches() {
    local pid="$1" needle="$2" cmdline
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
    [[ "$cmdline" == *"$needle"* ]]
}

# Print the pids of live processes whose command line contains all of the arguments.
crm__find_pids() {
    local f pid cmdline needle ok
    for f in /proc/[0-9]*/cmdline; do
        pid="${f#/proc/}"; pid="${pid%/cmdline}"
        [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
        cmdline="$(tr '\0' ' ' 2>/dev/null <"$f")" || continue
        ok=1
        for needle in "$@"; do
            [[ "$cmdline" == *"$needle"* ]] || { ok=0; break; }
        done
        ((ok)) && echo "$pid"
    done
    return 0
}

# Run a command as the PostgreSQL OS user when we are root (postgres refuses root).
crm__as_pg() {
    if [[ "$(id -u)" == 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

crm__pg_bin() {
    if [[ -n "${CRM_PG_BIN:-}" ]]; then
        echo "$CRM_PG_BIN"; return 0
    fi
    local d
    # Prefer 15 (what the project targets), else the newest installed major.
    if [[ -x /usr/lib/postgresql/15/bin/pg_ctl ]]; then
        echo /usr/lib/postgresql/15/bin; return 0
    fi
    d="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
    if [[ -n "$d" && -x "$d/pg_ctl" ]]; then
        echo "$d"; return 0
    fi
    d="$(command -v pg_ctl 2>/dev/null)" && { dirname "$d"; return 0; }
    return 1
}

crm__tail_log() {
    local file="$1" n="${2:-40}"
    [[ -f "$file" ]] || return 0
    printf '[infra] ---- last %s lines of %s ----\n' "$n" "$file" >&2
    tail -n "$n" "$file" >&2
    printf '[infra] ----\n' >&2
}

# ----------------------------------------------------------------------------- environment

# Where PostgreSQL keeps its data, socket and log: inside the state dir, unless the server runs
# as the postgres OS user (we are root) and that user cannot reach the state dir (a checkout in a
# private 0700 folder, e.g. under /root or mktemp -d); then under /var/lib, one folder per state
# dir. CRM_PG_HOME overrides.
crm__pg_dir() {
    if [[ -n "${CRM_PG_HOME:-}" ]]; then echo "$CRM_PG_HOME"; return; fi
    local dir="$CRM_STATE_DIR"
    if [[ "$(id -u)" == 0 ]] && id postgres >/dev/null 2>&1; then
        while [[ ! -d "$dir" ]]; do dir="$(dirname "$dir")"; done
        if ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
            echo "/var/lib/crm-platform/$(printf '%s' "$CRM_STATE_DIR" | sha1sum | cut -c1-12)"
            return
        fi
    fi
    echo "$CRM_STATE_DIR"
}

# Delete a state dir and, when it lives elsewhere, its PostgreSQL folder (infra must be stopped).
crm_wipe_state() {
    crm_infra_env
    rm -rf "$CRM_STATE_DIR"
    if [[ "$CRM_PG_DIR" != "$CRM_STATE_DIR" ]]; then rm -rf "$CRM_PG_DIR"; fi
}

crm_infra_env() {
    local here
    here="$CRM__INFRA_SH_DIR"
    export CRM_ROOT="${CRM_ROOT:-$(cd "$here/../.." && pwd)}"
    export CRM_STATE_DIR="${CRM_STATE_DIR:-$CRM_ROOT/.run}"
    # Absolute and canonical (no //, .., trailing /): postgres and the process
    # matching compare this path with command lines.
    CRM_STATE_DIR="$(realpath -m -- "$CRM_STATE_DIR")"
    export CRM_PG_PORT="${CRM_PG_PORT:-55432}"
    export CRM_KAFKA_PORT="${CRM_KAFKA_PORT:-59092}"
    export CRM_KAFKA_CONTROLLER_PORT="${CRM_KAFKA_CONTROLLER_PORT:-59093}"
    export CRM_CACHE_DIR="${CRM_CACHE_DIR:-${HOME:-/tmp}/.cache/crm-platform}"
    CRM_PG_DIR="$(crm__pg_dir)"
    export CRM_PG_DIR
    # Derived every time, so they follow a port change.
    export CRM_KAFKA_BOOTSTRAP="127.0.0.1:$CRM_KAFKA_PORT"
    export CRM_PG_DSN_BASE="postgresql://crm@127.0.0.1:$CRM_PG_PORT"
}

# ----------------------------------------------------------------------------- packages

crm_ensure_system_packages() (
    set -euo pipefail
    local -a missing=()
    crm__pg_bin >/dev/null 2>&1 || missing+=(postgresql-15)
    command -v kcat >/dev/null 2>&1 || missing+=(kcat)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
    # Prometheus and promtool: the test suite checks the scrape configs and dashboard queries.
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    # wrk: the load generator of ./crm bench-reads (a Python client would be the ceiling).
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    # smtp-sink (Postfix's C test server): the SMTP server of ./crm bench-send, so the bench
    # measures the sender rather than a Python server. Only the binary is used: see below.
    [[ -x /usr/sbin/smtp-sink ]] || missing+=(postfix)
    # Chromium and its driver: the test suite opens the preference centre in a real browser.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    if ((${#missing[@]} == 0)); then
        crm__log "system packages: all present (postgresql, kcat, docker-compose, maven, java, prometheus, wrk, chromium, smtp-sink)"
        return 0
    fi
    local -a sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || crm__die "missing packages ${missing[*]} and not root (no sudo)" || return 1
        sudo=(sudo)
    fi
    # Another apt may be running (e.g. a provisioning step): wait for its lock.
    local -a apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
    crm__log "installing missing system packages: ${missing[*]}"
    crm__log "+ apt-get update"
    "${apt[@]}" update -q || crm__die "apt-get update failed" || return 1
    if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && ! apt-cache show postgresql-15 >/dev/null 2>&1; then
        # Not Debian 12: take the distribution's default major instead.
        missing=("${missing[@]/postgresql-15/postgresql}")
    fi
    if [[ " ${missing[*]} " == *" postfix "* ]]; then
        # Postfix as a mail system is not wanted: "No configuration" writes no main.cf, so no
        # daemon is started now or at boot (its init script and systemd unit need one).
        echo "postfix postfix/main_mailer_type select No configuration" \
            | "${sudo[@]}" debconf-set-selections || crm__die "debconf-set-selections failed" || return 1
    fi
    crm__log "+ apt-get install -y --no-install-recommends ${missing[*]}"
    "${apt[@]}" install -y -q --no-install-recommends "${missing[@]}" \
        || crm__die "apt-get install ${missing[*]} failed" || return 1
    crm__log "system packages installed: ${missing[*]}"
)

# ----------------------------------------------------------------------------- kafka jars

# Directory holding the broker jars (set in the caller's shell by crm_ensure_kafka).
crm__kafka_libs_dir() {
    if [[ -n "${KAFKA_HOME:-}" && -d "$KAFKA_HOME/libs" ]]; then
        echo "$KAFKA_HOME/libs"
    else
        echo "$CRM_CACHE_DIR/kafka-$CRM_KAFKA_VERSION/libs"
    fi
}

# Makes sure the Kafka jars are there and exports CRM_KAFKA_LIBS / CRM_KAFKA_CLASSPATH.
crm_ensure_kafka() {
    crm_infra_env
    local libs
    libs="$(crm__kafka_libs_dir)"
    if [[ "$libs" != "$CRM_CACHE_DIR"/* ]]; then
        crm__log "kafka: using KAFKA_HOME jars in $libs"
    else
        crm__fetch_kafka_jars "$libs" || return 1
    fi
    export CRM_KAFKA_LIBS="$libs"
    export CRM_KAFKA_CLASSPATH="$libs/*"
}

crm__fetch_kafka_jars() (
    set -euo pipefail
    local libs="$1" base marker
    base="$(dirname "$libs")"
    marker="$base/.complete"
    [[ -f "$marker" && -f "$libs/kafka_2.13-$CRM_KAFKA_VERSION.jar" ]] && { crm__log "kafka: jars cached in $libs"; return 0; }
    command -v mvn >/dev/null 2>&1 || crm__die "mvn not found (run crm_ensure_system_packages)" || return 1
    mkdir -p "$base"
    # Two test sets may start at once on a cold cache: one download at a time.
    exec 9>"$base/.lock"
    if ! flock -n 9; then
        crm__log "kafka: another process is fetching the jars; waiting (up to 10 min)"
        flock -w 600 9 || crm__die "timed out waiting for $base/.lock" || return 1
    fi
    [[ -f "$marker" && -f "$libs/kafka_2.13-$CRM_KAFKA_VERSION.jar" ]] && { crm__log "kafka: jars cached in $libs"; return 0; }
    local tmp="$base/libs.tmp.$$" started=$SECONDS
    rm -rf "$tmp"
    crm__log "kafka: fetching Kafka $CRM_KAFKA_VERSION jars from Maven Central into $libs (once, ~45 MB) ..."
    if ! mvn -B -q -f "$CRM__KAFKA_DIR/pom.xml" dependency:copy-dependencies \
        -Dkafka.lib.dir="$tmp" >"$base/mvn.log" 2>&1; then
        crm__tail_log "$base/mvn.log" 30
        rm -rf "$tmp"
        crm__die "mvn could not fetch the Kafka jars (log: $base/mvn.log)" || return 1
    fi
    [[ -f "$tmp/kafka_2.13-$CRM_KAFKA_VERSION.jar" ]] \
        || { rm -rf "$tmp"; crm__die "mvn ran but kafka_2.13-$CRM_KAFKA_VERSION.jar is missing"; return 1; }
    # Swap in whole, then mark: a half-filled libs/ is never used.
    rm -rf "$libs"
    mv "$tmp" "$libs"
    date -u +%FT%TZ >"$marker"
    local -a jars=("$libs"/*.jar)
    crm__log "kafka: ${#jars[@]} jars fetched in $((SECONDS - started)) s"
)

# ----------------------------------------------------------------------------- postgres

crm_start_postgres() (
    set -euo pipefail
    crm_infra_env
    local -a dbs=("$@")
    local bin data sock logf
    bin="$(crm__pg_bin)" || crm__die "PostgreSQL binaries not found (run crm_ensure_system_packages)" || return 1
    data="$CRM_PG_DIR/pg"
    sock="$CRM_PG_DIR/pg-socket"
    logf="$CRM_PG_DIR/logs/postgres.log"
    mkdir -p "$CRM_STATE_DIR/logs" "$CRM_PG_DIR/logs"
    # Serialise concurrent starts of the same state dir (initdb / pg_ctl races).
    exec 8>"$CRM_STATE_DIR/.pg-start.lock"
    flock -w 180 8 || crm__die "postgres: another start of $CRM_STATE_DIR did not finish in 180 s" || return 1

    if crm__pg_running "$data"; then
        crm__log "postgres: already running on 127.0.0.1:$CRM_PG_PORT ($data)"
    else
        local -a orphans
        mapfile -t orphans < <(crm__pg_orphans "$data")
        if ((${#orphans[@]})); then
            crm__pg_kill "${orphans[@]}"
        fi
        # Something else (another cluster, a leftover from another state dir) holds the port.
        if crm__port_open "$CRM_PG_PORT"; then
            crm__die "postgres: port $CRM_PG_PORT is already in use by another process (not $data); stop it or set CRM_PG_PORT. $(crm__port_owner "$CRM_PG_PORT")" || return 1
        fi
        if [[ -f "$data/postmaster.pid" ]]; then
            crm__log "postgres: stale postmaster.pid (killed run?); postgres replaces it and runs crash recovery"
        fi
        if [[ ! -f "$data/PG_VERSION" ]]; then
            crm__pg_init "$bin" "$data" "$sock" || return 1
        fi
        crm__pg_write_conf "$data" "$sock" || return 1
        touch "$logf"
        if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$logf" "$sock"; fi
        crm__log "postgres: starting on 127.0.0.1:$CRM_PG_PORT (data $data, log $logf)"
        # pg_ctl -w waits until the server accepts connections; a stale
        # postmaster.pid from a killed run is detected and replaced by postgres.
        # 8>&-: the server must not inherit (and so hold forever) the start lock.
        if ! crm__as_pg "$bin/pg_ctl" -D "$data" -l "$logf" -w -t 90 start >/dev/null 8>&-; then
            crm__tail_log "$logf"
            crm__die "postgres: failed to start (log: $logf)" || return 1
        fi
    fi

    local i
    for ((i = 0; i < 60; i++)); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$CRM_PG_PORT" -U crm -d postgres && break
        sleep 0.5
    done
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$CRM_PG_PORT" -U crm -d postgres \
        || { crm__tail_log "$logf"; crm__die "postgres: not ready on 127.0.0.1:$CRM_PG_PORT"; return 1; }
    crm__log "postgres: ready at $CRM_PG_DSN_BASE"

    local db
    for db in "${dbs[@]}"; do
        crm__pg_create_db "$bin" "$db" || return 1
    done
)

# True when the postmaster of data dir $1 runs. Used instead of `pg_ctl status`,
# which counts a killed-but-unreaped (zombie) postmaster as running.
crm__pg_running() {
    local data="$1" pid i
    [[ -f "$data/postmaster.pid" ]] || return 1
    pid="$(head -n1 "$data/postmaster.pid" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # A zombie postmaster still "owns" the lock file for postgres: wait for the reap.
    for ((i = 0; i < 40; i++)); do
        if [[ ! -e "/proc/$pid" ]] || crm__pid_alive "$pid"; then break; fi
        sleep 0.25
    done
    crm__pid_alive "$pid" && crm__pid_matches "$pid" "-D $data "
}

# Pids of postmasters started on data dir $1 that no postmaster.pid points at any
# more (the state dir was removed while they ran).
crm__pg_orphans() {
    local data="$1" pid comm
    for pid in $(crm__find_pids "-D $data "); do
        comm="$(cat 2>/dev/null "/proc/$pid/comm")" || continue
        [[ "$comm" == postgres || "$comm" == postmaster ]] && echo "$pid"
    done
    return 0
}

# Fast shutdown (SIGINT) of postmasters by pid, for when pg_ctl cannot be used.
crm__pg_kill() {
    local pid i
    for pid in "$@"; do
        crm__log "postgres: stopping orphaned server pid $pid (its data dir is gone)"
        kill -INT "$pid" 2>/dev/null || continue
        for ((i = 0; i < 120; i++)); do
            crm__pid_alive "$pid" || break
            sleep 0.25
        done
        # Still there after 30 s: immediate shutdown.
        crm__pid_alive "$pid" && kill -QUIT "$pid" 2>/dev/null
    done
    return 0
}

crm__pg_init() (
    set -euo pipefail
    local bin="$1" data="$2" sock="$3"
    crm__log "postgres: initdb in $data (superuser crm, trust on 127.0.0.1)"
    mkdir -p "$data" "$sock"
    chmod 700 "$data"
    if [[ "$(id -u)" == 0 ]]; then
        id postgres >/dev/null 2>&1 || crm__die "no 'postgres' OS user (install postgresql-15)" || return 1
        chown postgres:postgres "$data" "$sock"
        # The postgres user must be able to reach the state dir (e.g. not under /root).
        runuser -u postgres -- test -w "$data" \
            || crm__die "user postgres cannot write $data: a parent directory is not traversable; set CRM_PG_HOME" || return 1
    fi
    local out
    # Text compared byte by byte (--lc-collate=C): the code-point order C.UTF-8 gives too, but
    # PostgreSQL 15 short-cuts only "C", and every text index and sort then skips the C library
    # (7-12 % of a fold's PostgreSQL CPU, docs/decisions.md); character classes stay UTF-8.
    if ! out="$(crm__as_pg "$bin/initdb" -D "$data" --username=crm --auth-local=trust \
        --auth-host=trust --encoding=UTF8 --locale=C.UTF-8 --lc-collate=C 2>&1)"; then
        printf '%s\n' "$out" >&2
        crm__die "postgres: initdb failed" || return 1
    fi
    # Settings that vary per run (port, paths) live in crm-local.conf, rewritten at each start.
    printf "\n# crm-platform local settings (deploy/local/infra.sh)\ninclude_if_exists = 'crm-local.conf'\n" \
        | crm__as_pg tee -a "$data/postgresql.conf" >/dev/null
)

crm__pg_write_conf() (
    set -euo pipefail
    local data="$1" sock="$2"
    mkdir -p "$sock"
    if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$sock"; fi
    # Durable defaults kept on purpose (fsync, synchronous_commit): this is the
    # system of record for projections.
    crm__as_pg tee "$data/crm-local.conf" >/dev/null <<EOF
# Written by deploy/local/infra.sh at every start; edits are lost.
listen_addresses = '127.0.0.1'
port = $CRM_PG_PORT
unix_socket_directories = '$sock'
max_connections = 200
shared_buffers = 256MB
# When each row committed (pg_xact_commit_timestamp): the benchmark's freshness is measured
# at commit, when a reader can first see an event; a few bytes per transaction.
track_commit_timestamp = on
EOF
)

crm__pg_create_db() {
    local bin="$1" db="$2" exists
    # Only plain identifiers: the name is spliced into SQL.
    [[ "$db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { crm__die "postgres: invalid database name '$db'"; return 1; }
    exists="$("$bin/psql" -X -q -t -A -h 127.0.0.1 -p "$CRM_PG_PORT" -U crm -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" \
        || { crm__die "postgres: cannot query databases"; return 1; }
    if [[ "$exists" == 1 ]]; then
        crm__log "postgres: database $db exists"
        return 0
    fi
    if "$bin/createdb" -h 127.0.0.1 -p "$CRM_PG_PORT" -U crm -O crm "$db" 2>/dev/null; then
        crm__log "postgres: created database $db"
        return 0
    fi
    # A concurrent start may have created it in the meantime.
    exists="$("$bin/psql" -X -q -t -A -h 127.0.0.1 -p "$CRM_PG_PORT" -U crm -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" || true
    [[ "$exists" == 1 ]] || { crm__die "postgres: could not create database $db"; return 1; }
}

crm__stop_postgres() (
    set -uo pipefail
    crm_infra_env
    local bin data="$CRM_PG_DIR/pg"
    bin="$(crm__pg_bin)" || { crm__log "postgres: no binaries, nothing to stop"; return 0; }
    if [[ ! -f "$data/PG_VERSION" ]] || ! crm__pg_running "$data"; then
        local -a orphans
        mapfile -t orphans < <(crm__pg_orphans "$data")
        if ((${#orphans[@]})); then
            crm__pg_kill "${orphans[@]}"
            return 0
        fi
        crm__log "postgres: not running"
        return 0
    fi
    crm__log "postgres: stopping ($data)"
    crm__as_pg "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null \
        || { crm__die "postgres: pg_ctl stop failed"; return 1; }
    crm__log "postgres: stopped"
)

# ----------------------------------------------------------------------------- kafka

crm__kafka_conf() { echo "$CRM_STATE_DIR/kafka/server.properties"; }
crm__kafka_pidfile() { echo "$CRM_STATE_DIR/kafka/kafka.pid"; }

# Pid of this state dir's broker, if it runs: from the pid file, else (pid file
# lost, e.g. a killed run or rm of the pid file) by scanning for its command line.
crm__kafka_pid() {
    local conf pidfile pid
    conf="$(crm__kafka_conf)"
    pidfile="$(crm__kafka_pidfile)"
    if [[ -f "$pidfile" ]]; then
        pid="$(<"$pidfile")"
        if crm__pid_matches "$pid" "kafka.Kafka $conf "; then
            echo "$pid"; return 0
        fi
    fi
    pid="$(crm__find_pids "kafka.Kafka $conf " | head -n1)"
    [[ -n "$pid" ]] && { echo "$pid"; return 0; }
    return 1
}

# True once the broker answers a metadata request and lists itself.
crm__kafka_ready() {
    if command -v kcat >/dev/null 2>&1; then
        kcat -b "$CRM_KAFKA_BOOTSTRAP" -L -m 3 2>/dev/null | grep -q "broker 1 at"
    else
        crm__port_open "$CRM_KAFKA_PORT"
    fi
}

crm_start_kafka() (
    set -euo pipefail
    crm_infra_env
    crm_ensure_kafka || return 1
    local kdir="$CRM_STATE_DIR/kafka" conf pidfile logf pid
    conf="$(crm__kafka_conf)"
    pidfile="$(crm__kafka_pidfile)"
    logf="$CRM_STATE_DIR/logs/kafka.log"
    mkdir -p "$kdir/data" "$CRM_STATE_DIR/logs"
    # Serialise concurrent starts of the same state dir: one broker, one pid file.
    exec 8>"$kdir/.start.lock"
    flock -w 180 8 || crm__die "kafka: another start of $CRM_STATE_DIR did not finish in 180 s" || return 1

    if pid="$(crm__kafka_pid)" && [[ ! -f "$kdir/data/meta.properties" ]]; then
        # Found by its command line, but its data dir was removed under it: useless.
        crm__log "kafka: broker pid $pid runs on a removed state dir; stopping it"
        crm__stop_kafka || return 1
    fi
    if pid="$(crm__kafka_pid)"; then
        echo "$pid" >"$pidfile"
        if crm__kafka_ready; then
            crm__log "kafka: already running (pid $pid) at $CRM_KAFKA_BOOTSTRAP"
            return 0
        fi
        crm__log "kafka: process $pid exists but is not ready yet; waiting"
    else
        [[ -f "$pidfile" ]] && { crm__log "kafka: removing stale pid file $pidfile"; rm -f "$pidfile"; }
        local port
        for port in "$CRM_KAFKA_PORT" "$CRM_KAFKA_CONTROLLER_PORT"; do
            if crm__port_open "$port"; then
                crm__die "kafka: port $port is already in use by another process (another broker from a different CRM_STATE_DIR?); stop it or choose other ports. $(crm__port_owner "$port")" || return 1
            fi
        done
        crm__kafka_render_conf "$conf" "$kdir/data" || return 1
        crm__kafka_format "$kdir" "$conf" "$CRM_STATE_DIR/logs/kafka-format.log" || return 1
        crm__log "kafka: starting broker at $CRM_KAFKA_BOOTSTRAP (controller :$CRM_KAFKA_CONTROLLER_PORT, log $logf)"
        printf '\n===== %s starting kafka %s =====\n' "$(date -u +%FT%TZ)" "$CRM_KAFKA_VERSION" >>"$logf"
        local heap="${CRM_KAFKA_HEAP_OPTS:-${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}}"
        # shellcheck disable=SC2016 # expanded by the inner shell, from its environment
        # Own session (setsid) so the broker outlives the calling shell and its
        # process group; the inner shell writes its own pid, then execs java.
        # 8>&-: the broker must not inherit (and so hold forever) the start lock.
        CRM__PIDFILE="$pidfile" CRM__HEAP="$heap" CRM__CP="$CRM_KAFKA_CLASSPATH" \
        CRM__LOG4J="$CRM__KAFKA_DIR/log4j2.properties" CRM__CONF="$conf" \
            setsid bash -c 'echo $$ >"$CRM__PIDFILE"; exec java $CRM__HEAP \
                -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
                -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
                -Dlog4j2.configurationFile="$CRM__LOG4J" \
                -cp "$CRM__CP" kafka.Kafka "$CRM__CONF"' \
            </dev/null >>"$logf" 2>&1 8>&- &
        # Give the inner shell a moment to write the pid file.
        local i
        for ((i = 0; i < 50; i++)); do
            [[ -s "$pidfile" ]] && break
            sleep 0.1
        done
        [[ -s "$pidfile" ]] || { crm__tail_log "$logf"; crm__die "kafka: the broker launcher did not start (log: $logf)"; return 1; }
        pid="$(<"$pidfile")"
    fi

    local limit="${CRM_KAFKA_START_TIMEOUT:-90}"
    local deadline=$((SECONDS + limit))
    until crm__kafka_ready; do
        if ! crm__pid_alive "$pid"; then
            rm -f "$pidfile"
            crm__tail_log "$logf"
            crm__die "kafka: broker process $pid exited during startup (log: $logf)" || return 1
        fi
        if ((SECONDS >= deadline)); then
            crm__tail_log "$logf"
            crm__die "kafka: broker (pid $pid) not ready at $CRM_KAFKA_BOOTSTRAP after $limit s (log: $logf); it is left running, see crm_stop_infra" || return 1
        fi
        sleep 0.5
    done
    crm__log "kafka: ready at $CRM_KAFKA_BOOTSTRAP (pid $pid)"
)

# shellcheck disable=SC2016 # the patterns are the literal ${...} placeholders
crm__kafka_render_conf() (
    set -euo pipefail
    local conf="$1" datadir="$2" tpl t
    tpl="$CRM__KAFKA_DIR/server.properties.template"
    t="$(<"$tpl")" || crm__die "kafka: cannot read $tpl" || return 1
    # Literal replacement (no sed), so paths with any character are safe.
    t="${t//'${KAFKA_PORT}'/$CRM_KAFKA_PORT}"
    t="${t//'${KAFKA_CONTROLLER_PORT}'/$CRM_KAFKA_CONTROLLER_PORT}"
    t="${t//'${KAFKA_LOG_DIRS}'/$datadir}"
    printf '%s\n' "$t" >"$conf.tmp"
    mv "$conf.tmp" "$conf"
)

# Formats the KRaft storage once (meta.properties present = formatted).
crm__kafka_format() (
    set -euo pipefail
    local kdir="$1" conf="$2" logf="$3" cid
    [[ -f "$kdir/data/meta.properties" ]] && return 0
    if [[ -s "$kdir/cluster.id" ]]; then
        cid="$(<"$kdir/cluster.id")"
    else
        cid="$(java -cp "$CRM_KAFKA_CLASSPATH" kafka.tools.StorageTool random-uuid 2>>"$logf" | tail -n1)"
        [[ "$cid" =~ ^[A-Za-z0-9_-]{22}$ ]] || crm__die "kafka: could not generate a cluster id (got '$cid')" || return 1
        echo "$cid" >"$kdir/cluster.id"
    fi
    crm__log "kafka: formatting KRaft storage in $kdir/data (cluster id $cid)"
    # Static voters in the config, so no --standalone (that is for dynamic quorums).
    if ! java -Dlog4j2.configurationFile="$CRM__KAFKA_DIR/log4j2.properties" \
        -cp "$CRM_KAFKA_CLASSPATH" kafka.tools.StorageTool format \
        --config "$conf" --cluster-id "$cid" --ignore-formatted >>"$logf" 2>&1; then
        crm__tail_log "$logf" 20
        crm__die "kafka: storage format failed (log: $logf)" || return 1
    fi
)

crm__stop_kafka() (
    set -uo pipefail
    crm_infra_env
    local pidfile pid
    pidfile="$(crm__kafka_pidfile)"
    if ! pid="$(crm__kafka_pid)"; then
        [[ -f "$pidfile" ]] && { crm__log "kafka: removing stale pid file"; rm -f "$pidfile"; }
        crm__log "kafka: not running"
        return 0
    fi
    crm__log "kafka: stopping broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    # Controlled shutdown usually takes a few seconds.
    for ((i = 0; i < 60; i++)); do
        crm__pid_alive "$pid" || break
        sleep 0.5
    done
    if crm__pid_alive "$pid"; then
        crm__log "kafka: still alive after 30 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            crm__pid_alive "$pid" || break
            sleep 0.25
        done
    fi
    rm -f "$pidfile"
    crm__log "kafka: stopped"
)

# ----------------------------------------------------------------------------- whole set

# crm_start_infra [db ...]: packages, jars, postgres (+ databases), kafka.
crm_start_infra() {
    crm_infra_env
    local -a dbs=("$@")
    ((${#dbs[@]})) || dbs=("${CRM_DEFAULT_DATABASES[@]}")
    crm_ensure_system_packages || return 1
    crm_ensure_kafka || return 1
    crm_start_postgres "${dbs[@]}" || return 1
    crm_start_kafka || return 1
    crm__log "infra up: CRM_PG_DSN_BASE=$CRM_PG_DSN_BASE CRM_KAFKA_BOOTSTRAP=$CRM_KAFKA_BOOTSTRAP (state $CRM_STATE_DIR)"
}

crm_stop_infra() {
    crm_infra_env
    local rc=0
    crm__stop_kafka || rc=1
    crm__stop_postgres || rc=1
    return "$rc"
}

crm_infra_status() {
    crm_infra_env
    local rc=0 pid
    if pid="$(crm__kafka_pid)"; then
        if crm__kafka_ready; then
            echo "kafka:    running (pid $pid) at $CRM_KAFKA_BOOTSTRAP"
        else
            echo "kafka:    process $pid alive but not answering at $CRM_KAFKA_BOOTSTRAP"; rc=1
        fi
    else
        echo "kafka:    stopped"; rc=1
    fi
    if crm__pg_running "$CRM_PG_DIR/pg"; then
        echo "postgres: running at $CRM_PG_DSN_BASE (data $CRM_PG_DIR/pg)"
    else
        echo "postgres: stopped"; rc=1
    fi
    return "$rc"
}

# ----------------------------------------------------------------------------- CLI

crm__infra_main() {
    set -euo pipefail
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
        start) crm_start_infra "$@" ;;
        stop) crm_stop_infra ;;
        restart) crm_stop_infra && crm_start_infra "$@" ;;
        status) crm_infra_status ;;
        env)
            crm_infra_env
            local v
            for v in CRM_ROOT CRM_STATE_DIR CRM_PG_PORT CRM_KAFKA_PORT CRM_KAFKA_CONTROLLER_PORT \
                CRM_CACHE_DIR CRM_KAFKA_BOOTSTRAP CRM_PG_DSN_BASE; do
                printf 'export %s=%q\n' "$v" "${!v}"
            done
            ;;
        *)
            echo "usage: $0 start [db ...] | stop | restart [db ...] | status | env" >&2
            echo "  start with no databases creates: ${CRM_DEFAULT_DATABASES[*]}" >&2
            return 2
            ;;
    esac
}

# Run the CLI only when executed, not when sourced.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    crm__infra_main "$@"
fi
