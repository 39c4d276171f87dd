#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py and for trying
# `./launch.sh sweep ... --slurm`: installs slurm-wlm and munge with apt-get if absent, writes
# /etc/slurm/slurm.conf for this host (its real CPUs and memory, proctrack/linuxproc,
# task/none, one Default=YES partition), creates the munge key if missing, starts munged,
# slurmctld and slurmd, and waits until sinfo shows the node idle.
#
#   .ci/slurm_up.sh     (as root; CNNJAX_SLURM_WAIT=S seconds for the node, default 90)
#
# Idempotent: a second run finds the daemons up and only checks. It never overwrites a
# slurm.conf that it did not write. Exit 0: the node is up; 1: why not, on stderr.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARK="# written by cnnjax .ci/slurm_up.sh"
WAIT_S=${CNNJAX_SLURM_WAIT:-90}
LOG_DIR=/var/log/slurm

say() { echo "[slurm_up] $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (it installs packages and starts daemons); not started"

install_packages() {
  local b missing=0
  for b in sbatch srun sinfo squeue scontrol slurmctld slurmd munged; do
    command -v "$b" >/dev/null || missing=1
  done
  ((missing)) || return 0
  command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and there is no apt-get"
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
    slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
}

# The node line from slurmd itself (NodeName=host CPUs=... RealMemory=...): a node defined
# with more than slurmd finds would be drained as 'inconsistent'.
node_line() {
  slurmd -C | grep '^NodeName=' || die "slurmd -C printed no NodeName line"
}

select_type() {
  # cons_tres since SLURM 19.05; older ones only have cons_res.
  if find /usr/lib* -name select_cons_tres.so 2>/dev/null | grep -q .; then
    echo select/cons_tres
  else
    echo select/cons_res
  fi
}

write_conf() {
  local host=$1 node select want
  node=$(node_line) || exit 1
  select=$(select_type)
  want=$(cat <<CONF
$MARK; rerun it to rewrite, or delete this file.
ClusterName=cnnjax
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=$select
SelectTypeParameters=CR_Core_Memory
# Jobs that ask for no memory get this much per CPU, not the whole node.
DefMemPerCPU=1024
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# sbatch refuses a job no node or partition could ever run, instead of queueing it.
EnforcePartLimits=ALL
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  )
  if [[ -f $CONF ]] && ! head -1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script: left alone"
  fi
  if [[ -f $CONF && "$(cat "$CONF")" == "$want" ]]; then
    return 1  # unchanged
  fi
  mkdir -p "$CONF_DIR" && printf '%s\n' "$want" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF" ||
    die "cannot write $CONF"
  say "wrote $CONF"
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    return
  fi
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge
  say "starting munged"
  runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
    sleep 0.1
  done
  die "munged started but munge/unmunge fail"
}

# True if daemon $1 runs (its pid file names a live process of that name, not a reused pid).
running() {
  local pid
  pid=$(cat "/run/$1.pid" 2>/dev/null) || return 1
  [[ -n $pid && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]]
}

start_slurm() {
  mkdir -p /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
  if ! running slurmctld; then
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
  fi
  if ! running slurmd; then
    say "starting slurmd"
    slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
  fi
}

# The node's state as sinfo prints it (idle, mixed, allocated, down*, drained...), or ''.
node_state() { sinfo -h -n "$1" -o %T 2>/dev/null | head -1; }

wait_idle() {
  local host=$1 state="" t0=$SECONDS resumed=0
  while ((SECONDS - t0 < WAIT_S)); do
    state=$(node_state "$host")
    case $state in
      idle | mixed | allocated | completing) say "node $host is $state"; return 0 ;;
      drain* | down*)
        # A node left down or drained by an earlier run (ReturnToService covers most cases).
        if ((!resumed)) && ((SECONDS - t0 > 5)); then
          scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
          resumed=1
        fi ;;
    esac
    sleep 1
  done
  say "node $host is '${state:-not known to sinfo}' after ${WAIT_S}s; the logs' ends:"
  tail -n 5 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
  scontrol show node "$host" 2>/dev/null | grep -i reason >&2 || true
  exit 1
}

main() {
  install_packages
  local host
  host=$(hostname -s)
  getent hosts "$host" >/dev/null || die "this host's name '$host' does not resolve"
  start_munge
  if write_conf "$host"; then
    # A new or changed slurm.conf: restart whatever runs with the old one.
    if running slurmctld || running slurmd; then
      say "slurm.conf changed: restarting the daemons"
      scontrol shutdown >/dev/null 2>&1 || true
      for _ in $(seq 100); do
        running slurmctld || running slurmd || break
        sleep 0.1
      done
    fi
  fi
  start_slurm
  wait_idle "$host"
}

main "$@"
