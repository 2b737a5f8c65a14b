# The compare scenario (busybox sh, sourced by /init with lib.sh; run by tools/e2e/compare): the
# same fio jobs, in a guest with the same configuration, against the kernel's xen-blkback (`phy:`
# through a loop device over a raw file) and against XenDisk (`raw:` on the same file), in
# `e2e_rounds=N` rounds of blkback then XenDisk. Only one backend is present at a time: blkback is
# loaded for its turn and unloaded after it (it claims every vbd device while loaded), and XenDisk's
# service runs only for its own turn. Each job's totals become a line for the host:
#   E2E: RESULT <backend> <round> <job> read_iops=... read_kibs=... read_lat_us=... write_iops=... write_kibs=... write_lat_us=...

# The job names, from the guest's image (domU/init runs every file in /etc/e2e/workloads).
jobs=$(cpio -t </guest/domU.cpio 2>/dev/null | sed -n 's|^etc/e2e/workloads/\(.*\)\.fio$|\1|p' | sort)
plan="dom0-modules dom0-toolstack bench-image"
round=1
while [ $round -le "$rounds" ]; do
    for backend in blkback xendisk; do
        plan="$plan $backend-start-$round $backend-guest-$round guest-$backend-$round-blkfront-xvda"
        for job in $jobs; do plan="$plan guest-$backend-$round-bench-$job"; done
        plan="$plan $backend-guest-$round-poweroff $backend-stop-$round"
    done
    round=$((round + 1))
done
plan="$plan no-stale-backend-nodes"
say "PLAN $plan"
info "scenario compare, $rounds round(s), jobs: $(echo $jobs), dom0 kernel $(uname -r)"

start_toolstack

# One raw file for both backends, written in full so that no run pays for allocating it.
mkdir -p $images
bench_mib=128
if dd if=/dev/zero of=$images/bench.img bs=1M count=$bench_mib status=none && losetup /dev/loop0 $images/bench.img; then
    pass bench-image
else
    fail bench-image "cannot create the $bench_mib MiB image or its loop device"; finish
fi
cat /guest/domU.cpio /guest/fio.cpio >/guest/domU-fio.cpio && rm /guest/fio.cpio

# cpu_snapshot FILE, cpu_since FILE: dom0's CPU time (the first line of /proc/stat) now, and the share
# of it since FILE that was busy (not idle or iowait) and stolen (runnable, but Xen ran another vCPU).
cpu_snapshot() { head -n 1 /proc/stat >"$1"; }
cpu_since() {
    { cat "$1"; head -n 1 /proc/stat; } | awk '
        { idle[NR] = $5 + $6; steal[NR] = $9; total[NR] = 0; for (i = 2; i <= NF; i++) total[NR] += $i }
        END { t = total[2] - total[1]; if (t <= 0) t = 1
              printf "busy %d%%, stolen %d%% of %.0f s of CPU time", 100 * (t - (idle[2] - idle[1]) - (steal[2] - steal[1])) / t, 100 * (steal[2] - steal[1]) / t, t / 100 }'
}
# thread_cpu PID: the process's threads by CPU time used (user + system, seconds), busiest first.
thread_cpu() {
    for task in /proc/"$1"/task/*; do
        sed 's/^[0-9]* (\(.*\)) [A-Z] /\1|/' "$task/stat" | awk -F'|' '{ split($2, f, " "); printf "%.2f %s\n", (f[11] + f[12]) / 100, $1 }'
    done | sort -rn | head -n 12 | tr '\n' ';'
}

# backend_counters BACKEND: the backend's own view of the guest's xvda, into the log (E2E-LOG lines):
# XenDisk's `xendisk status` and its metrics (grant operations, persistent-grant lookups,
# back-pressure, batch sizes), blkback's sysfs statistics.
backend_counters() {
    if [ "$1" = xendisk ]; then
        if xendisk status >/tmp/status.log 2>&1; then
            sed 's/^/E2E-LOG xendisk-status| /' /tmp/status.log
        else
            echo "E2E-LOG xendisk-status| failed: $(tr '\n' ' ' </tmp/status.log)"
            show /var/log/xendisk.log 20
        fi
        wget -q -O - http://127.0.0.1:9464/metrics 2>&1 | grep -v -e '^#' -e '_bucket{' | sed 's/^/E2E-LOG xendisk-metrics| /'
    else
        for f in /sys/bus/xen-backend/devices/vbd-*-51712/statistics/*; do
            [ -f "$f" ] && echo "E2E-LOG blkback-statistics| $(basename "$f") $(cat "$f")"
        done
    fi
}

# run_bench BACKEND ROUND DISK: one guest (two vCPUs, like the checks' feature guest) runs every job
# on xvda; its numbers become RESULT lines.
run_bench() {
    name=e2e-$1-$2
    write_config $name bench /guest/domU-fio.cpio 512 2 "'$3'" ""
    create_guest $name "$1-guest-$2" || return
    # The guest waits after its jobs while dom0 reads the backend's counters for the device, and how
    # busy dom0 was while the jobs ran (blkback works in dom0's kernel, XenDisk in its process).
    follow_guest $name "GUEST: INFO running the fio jobs" 600 && cpu_snapshot /tmp/cpu-jobs
    if follow_guest $name "GUEST: WAIT counters" 1200; then
        info "$1 round $2: dom0 CPU while the jobs ran: $(cpu_since /tmp/cpu-jobs)"
        cpu_snapshot /tmp/cpu-idle
        sleep 10
        info "$1 round $2: dom0 CPU for 10 s after them, the guest idle: $(cpu_since /tmp/cpu-idle)"
        [ "$1" = xendisk ] && info "$1 round $2: xendisk threads by CPU seconds: $(thread_cpu "$xendisk_pid")"
        # CPU seconds per domain since it started (Time(s)); a leftover domain would show here too.
        xl list 2>&1 | sed 's/^/E2E-LOG xl-list| /'
        backend_counters "$1"
        xenstore-write "/local/domain/$(xl domid $name)/data/e2e-go" 1
    fi
    if follow_guest $name "GUEST: DONE" 300; then
        for job in $jobs; do
            numbers=$(guest_data $name "bench-$job")
            [ -n "$numbers" ] && say "RESULT $1 $2 $job $numbers"
        done
        wait_guest_gone $name "$1-guest-$2-poweroff"
    else
        fail "$1-guest-$2-poweroff" "no final line from the guest"
        xl destroy $name 2>/dev/null
    fi
}

round=1
while [ $round -le "$rounds" ]; do
    if modprobe xen-blkback; then
        pass blkback-start-$round
        run_bench blkback $round "vdev=xvda,access=rw,script=e2e-phy,target=/dev/loop0"
        # blkback must be gone before XenDisk serves vbd devices.
        if modprobe -r xen-blkback && ! grep -q '^xen_blkback ' /proc/modules; then
            pass blkback-stop-$round
        else
            fail blkback-stop-$round "xen-blkback could not be unloaded"; finish
        fi
    else
        fail blkback-start-$round "modprobe xen-blkback failed"
    fi
    if start_xendisk xendisk-start-$round; then
        run_bench xendisk $round "vdev=xvda,access=rw,script=xendisk,target=raw:$images/bench.img"
        stop_xendisk xendisk-stop-$round
    fi
    round=$((round + 1))
done
no_stale_backend_nodes no-stale-backend-nodes
skip_rest "$plan" "not reached: an earlier step of its round failed"
