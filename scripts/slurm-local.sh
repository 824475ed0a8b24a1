#!/usr/bin/env bash
# A real SLURM cluster of two nodes on this machine, for tests/test_slurm.py and for trying the cluster path:
# munged, MariaDB, slurmdbd (accounting, which sacct and so submitit read), slurmctld, and one slurmd per node
# (node1, node2: each its own port and spool, both on 127.0.0.1). Needs root and Debian/Ubuntu's apt.
#
#   bash scripts/slurm-local.sh start    # install what is missing, configure, start, wait until both nodes are idle
#   bash scripts/slurm-local.sh status   # which daemons run, and sinfo
#   bash scripts/slurm-local.sh stop     # end the daemons this script started (by their pid files)
#
# Everything lives under $SLURM_LOCAL_DIR (default /var/tmp/infersweep-slurm): etc/slurm.conf, the logs, the
# spool and the database. Clients find the cluster through SLURM_CONF=$SLURM_LOCAL_DIR/etc/slurm.conf
# (tests/test_slurm.py sets it itself). `start` on a running cluster only checks it. The node names resolve
# to 127.0.0.1 through lines this script adds to /etc/hosts (DeepSpeed's master address is the first node).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/var/tmp/infersweep-slurm}
NODES=(node1 node2)
NODE_PORTS=(6821 6822)
CTLD_PORT=6817
DBD_PORT=6819
DB_PORT=3307
CPUS=$(nproc)
HOSTS_MARK="# infersweep slurm-local.sh"
export SLURM_CONF=$DIR/etc/slurm.conf
export PATH=$PATH:/usr/sbin:/sbin

running() {  # running NAME: the daemon whose pid file is $DIR/run/NAME.pid is alive
    local pid
    pid=$(cat "$DIR/run/$1.pid" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...: poll COMMAND until it succeeds
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq $((seconds * 2))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "slurm-local: no $what after ${seconds} s (logs: $DIR/log)" >&2
    return 1
}

install() {
    local missing=()
    for cmd in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] && return
    echo "slurm-local: installing (missing: ${missing[*]})"
    # the packages' own services stay stopped (no systemd here; this script starts its own daemons)
    local policy=/usr/sbin/policy-rc.d added=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && added=1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server >/dev/null
    [ $added = 0 ] || rm -f $policy
}

configure() {
    mkdir -p "$DIR"/{etc,run,log,spool/ctld,munge,db}
    for node in "${NODES[@]}"; do mkdir -p "$DIR/spool/$node"; done
    chmod 755 "$DIR/munge"
    [ -s "$DIR/etc/munge.key" ] || mungekey --create --keyfile="$DIR/etc/munge.key"
    chmod 600 "$DIR/etc/munge.key"
    local auth="AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket"
    cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=infersweep
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
$auth
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
# no cgroups here: processes tracked through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
# a node set down by scontrol (state=down) stays down until state=resume, as on a real site
ReturnToService=1
SlurmdParameters=config_overrides
# quick turn-around: a cancelled or timed-out job's processes get 5 s after SIGTERM
KillWait=5
MinJobAge=300
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# the munge socket of the connection to slurmdbd (AuthInfo is not used for it)
AccountingStoragePass=$DIR/munge/munge.socket
EOF
    for i in "${!NODES[@]}"; do
        echo "NodeName=${NODES[$i]} NodeHostname=localhost NodeAddr=127.0.0.1 Port=${NODE_PORTS[$i]}" \
             "CPUs=$CPUS RealMemory=4096 State=UNKNOWN" >>"$DIR/etc/slurm.conf"
    done
    local nodes
    nodes=$(IFS=,; echo "${NODES[*]}")
    echo "PartitionName=debug Nodes=$nodes Default=YES MaxTime=INFINITE State=UP" >>"$DIR/etc/slurm.conf"
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
$auth
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
    for node in "${NODES[@]}"; do
        getent hosts "$node" >/dev/null || echo "127.0.0.1 $node $HOSTS_MARK" >>/etc/hosts \
            || { echo "slurm-local: cannot add $node to /etc/hosts" >&2; exit 1; }
    done
}

start_munge() {
    running munged && return
    munged --key-file="$DIR/etc/munge.key" --socket="$DIR/munge/munge.socket" --pid-file="$DIR/run/munged.pid" \
           --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed" --force
    wait_for "munged" 10 test -S "$DIR/munge/munge.socket"
}

start_db() {
    running mariadbd && return
    local fresh=0
    if [ ! -d "$DIR/db/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$DIR/db" --user=root --auth-root-authentication-method=socket \
                           >"$DIR/log/mariadb-install.log" 2>&1
        fresh=1
    fi
    setsid mariadbd --no-defaults --datadir="$DIR/db" --user=root --port=$DB_PORT --bind-address=127.0.0.1 \
             --socket="$DIR/run/mariadb.sock" --pid-file="$DIR/run/mariadbd.pid" \
             --log-error="$DIR/log/mariadb.log" </dev/null >>"$DIR/log/mariadb.log" 2>&1 &
    wait_for "MariaDB" 60 mariadb --no-defaults --socket="$DIR/run/mariadb.sock" -u root -e "SELECT 1"
    if [ $fresh = 1 ]; then
        mariadb --no-defaults --socket="$DIR/run/mariadb.sock" -u root -e "
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    fi
}

start_slurm() {
    if ! running slurmdbd; then
        slurmdbd
        wait_for "slurmdbd" 60 timeout 10 sacctmgr -n list cluster
    fi
    sacctmgr -n list cluster format=cluster | grep -qw infersweep || sacctmgr -i add cluster infersweep >/dev/null
    if running slurmctld; then scontrol reconfigure; else slurmctld; fi
    wait_for "slurmctld" 60 timeout 10 scontrol ping
    for node in "${NODES[@]}"; do
        running "slurmd-$node" || slurmd -N "$node"
    done
    # a node that an earlier test set down comes back on a (re)start
    local down
    down=$(sinfo -h -N -t down,drain -o %N | sort -u | paste -sd,)
    [ -z "$down" ] || scontrol update nodename="$down" state=resume
    wait_for "idle nodes (sinfo)" 60 both_idle
}

both_idle() {
    [ "$(sinfo -h -N -t idle -o %N | sort -u | wc -l)" -eq ${#NODES[@]} ]
}

start() {
    [ "$(id -u)" = 0 ] || { echo "slurm-local: needs root (daemons, apt-get, /etc/hosts)" >&2; exit 1; }
    install
    configure
    start_munge
    start_db
    start_slurm
    echo "slurm-local: up (export SLURM_CONF=$SLURM_CONF)"
    sinfo -N
}

stop() {
    local name pid
    for name in $(printf 'slurmd-%s ' "${NODES[@]}") slurmctld slurmdbd mariadbd munged; do
        running "$name" || continue
        pid=$(cat "$DIR/run/$name.pid")
        kill "$pid"
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        echo "slurm-local: stopped $name ($pid)"
    done
    [ -w /etc/hosts ] && sed -i "/$HOSTS_MARK\$/d" /etc/hosts
    return 0
}

status() {
    local name state=0
    for name in munged mariadbd slurmdbd slurmctld $(printf 'slurmd-%s ' "${NODES[@]}"); do
        if running "$name"; then echo "$name: running ($(cat "$DIR/run/$name.pid"))"; else echo "$name: stopped"; state=3; fi
    done
    [ $state = 0 ] && sinfo -N
    return $state
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
