# The compare scenario (busybox sh, sourced by /init with lib.sh; run by tools/e2e/compare): the
# same fio jobs, in a guest with the same configuration, against seven backends, in `e2e_rounds=N`
# rounds of:
#   blkback        the kernel's xen-blkback, `phy:` through a loop device over the raw file
#   qdisk-raw      QEMU's xen-block (`backendtype=qdisk`; libxl starts qemu-system-xen for the guest) on the raw file
#   qdisk-qcow2    the same on a fresh qcow2 overlay over the raw file (qemu-img create -b)
#   xendisk-raw    XenDisk, `raw:` on the raw file
#   xendisk-phy    XenDisk, `raw:` on the loop device blkback serves (the same storage path below both)
#   xendisk-qcow2  XenDisk, `cow:` with a fresh qcow2 overlay over the raw file
#   xendisk-bitmap XenDisk, `cow:...,format=bitmap` with a fresh bitmap overlay over the raw file
# Only one backend serves vbd devices at a time: blkback is loaded for its turn and unloaded after it
# (it claims every vbd device while loaded), XenDisk's service runs for its three turns only; qdisk
# devices live under backend/qdisk, which neither watches. Each job's totals become a line for the host:
#   E2E: RESULT <backend> <round> <job> read_iops=... read_kibs=... read_lat_us=... read_p99_us=...
#        write_iops=... write_kibs=... write_lat_us=... write_p99_us=... cpu_us_per_req=...

# The job names, from the guest's image (domU/init runs every file in /etc/e2e/workloads).
jobs=$(cpio -t </guest/domU.cpio 2>/dev/null | sed -n 's|^etc/e2e/workloads/\(.*\)\.fio$|\1|p' | sort)
backends="blkback qdisk-raw qdisk-qcow2 xendisk-raw xendisk-phy xendisk-qcow2 xendisk-bitmap"
# e2e_backends=A+B (tools/e2e/compare --backends) keeps only those, in this order.
wanted=$(sed -n 's/.*e2e_backends=\([^ ]*\).*/\1/p' /proc/cmdline | tr '+' ' ')
if [ -n "$wanted" ]; then
    kept=
    for backend in $backends; do case " $wanted " in *" $backend "*) kept="$kept $backend" ;; esac; done
    backends=${kept# }
fi
# XenDisk's service runs from its first turn to its last in each round.
first_xendisk=$(for b in $backends; do case $b in xendisk-*) echo $b ;; esac; done | head -n 1)
last_xendisk=$(for b in $backends; do case $b in xendisk-*) echo $b ;; esac; done | tail -n 1)
plan="dom0-modules dom0-toolstack bench-image"
round=1
while [ $round -le "$rounds" ]; do
    for backend in $backends; do
        [ $backend = blkback ] && plan="$plan blkback-start-$round"
        [ $backend = "$first_xendisk" ] && plan="$plan xendisk-start-$round"
        plan="$plan $backend-guest-$round guest-$backend-$round-blkfront-xvda"
        for job in $jobs; do plan="$plan guest-$backend-$round-bench-$job"; done
        plan="$plan $backend-guest-$round-poweroff"
        [ $backend = blkback ] && plan="$plan blkback-stop-$round"
        [ $backend = "$last_xendisk" ] && plan="$plan xendisk-stop-$round"
    done
    round=$((round + 1))
done
plan="$plan no-stale-backend-nodes"
say "PLAN $plan"
info "scenario compare, $rounds round(s), backends: $backends, jobs: $(echo $jobs), dom0 kernel $(uname -r)"

start_toolstack
# QEMU for qdisk starts inside emulated dom0; libxl's default of 60 s for it to come up is too short there.
export LIBXL_DEVICE_MODEL_START_TIMEOUT=600

# One raw file for every backend, written in full so that no run pays for allocating it. The images
# get a RAM file system of their own: dom0's root file system, which holds the unpacked image and the
# guest's ramdisk, has no room left for the raw file and a bitmap overlay of its full size.
mkdir -p $images
mount -t tmpfs -o size=320m tmpfs $images
bench_mib=128
if dd if=/dev/zero of=$images/bench.img bs=1M count=$bench_mib status=none && losetup /dev/loop0 $images/bench.img; then
    pass bench-image
else
    fail bench-image "cannot create the $bench_mib MiB image or its loop device"; finish
fi
cat /guest/domU.cpio /guest/fio.cpio >/guest/domU-fio.cpio && rm /guest/fio.cpio

# cpu_snapshot FILE, cpu_since FILE: dom0's CPU time (the first line of /proc/stat) now, and the share
# of it since FILE that was busy (not idle or iowait) and stolen (runnable, but Xen ran another vCPU).
# cpu_busy_since FILE: the busy time since FILE in hundredths of a CPU second, and the elapsed
# time in hundredths of a second ("BUSY ELAPSED"; /proc/stat counts in hundredths of a second).
cpu_snapshot() { head -n 1 /proc/stat >"$1"; }
cpu_since() {
    { cat "$1"; head -n 1 /proc/stat; } | awk '
        { idle[NR] = $5 + $6; steal[NR] = $9; total[NR] = 0; for (i = 2; i <= NF; i++) total[NR] += $i }
        END { t = total[2] - total[1]; if (t <= 0) t = 1
              printf "busy %d%%, stolen %d%% of %.0f s of CPU time", 100 * (t - (idle[2] - idle[1]) - (steal[2] - steal[1])) / t, 100 * (steal[2] - steal[1]) / t, t / 100 }'
}
cpu_busy_since() {
    { cat "$1"; head -n 1 /proc/stat; } | awk -v cpus="$(grep -c '^cpu[0-9]' /proc/stat)" '
        { idle[NR] = $5 + $6; steal[NR] = $9; total[NR] = 0; for (i = 2; i <= NF; i++) total[NR] += $i }
        END { t = total[2] - total[1]; printf "%d %d", t - (idle[2] - idle[1]) - (steal[2] - steal[1]), t / cpus }'
}
# thread_cpu PID: the process's threads by CPU time used (user + system, seconds), busiest first,
# with their context switches (voluntary+involuntary) and page faults (minor and major).
thread_cpu() {
    for task in /proc/"$1"/task/*; do
        cs=$(awk '/^voluntary_ctxt_switches:/ { v = $2 } /^nonvoluntary_ctxt_switches:/ { n = $2 } END { printf "%d+%d", v, n }' "$task/status" 2>/dev/null)
        sed 's/^[0-9]* (\(.*\)) [A-Z] /\1|/' "$task/stat" | awk -F'|' -v cs="$cs" '{ split($2, f, " "); printf "%.2f (user %.2f, system %.2f, switches %s, page faults %d) %s\n", (f[11] + f[12]) / 100, f[11] / 100, f[12] / 100, cs, f[7] + f[9], $1 }'
    done | sort -rn | head -n 12 | tr '\n' ';'
}

# syscalls_start, syscalls_report PID LABEL (only with e2e_count_syscalls=1 on the kernel command
# line, tools/e2e/compare --count-syscalls): from the start to the report, every system call in dom0
# counted by thread and call number with a tracing histogram (CONFIG_HIST_TRIGGERS; perf does not run
# in this dom0); the report prints PID's threads' counts (by thread name and call: 426 io_uring_enter,
# 16 ioctl, 0 read, 1 write, 7 poll, 202 futex) and their total.
count_syscalls=$(grep -c 'e2e_count_syscalls=1' /proc/cmdline)
tracing=/sys/kernel/tracing
syscall_hist='hist:keys=common_pid,id:vals=hitcount:size=8192'
syscalls_start() {
    [ "$count_syscalls" = 1 ] || return 0
    [ -d $tracing/events ] || mount -t tracefs nodev $tracing 2>/dev/null
    echo "!$syscall_hist" >$tracing/events/raw_syscalls/sys_enter/trigger 2>/dev/null
    echo "$syscall_hist" >$tracing/events/raw_syscalls/sys_enter/trigger || info "cannot set the system-call histogram"
}
syscalls_report() {
    [ "$count_syscalls" = 1 ] || return 0
    ls /proc/"$1"/task | while read -r tid; do echo "$tid $(cat /proc/"$1"/task/"$tid"/comm 2>/dev/null | tr ' ' '_')"; done >/tmp/tids
    counts=$(sed -n 's/.*common_pid: *\([0-9]*\), *id: *\([0-9]*\) *} *hitcount: *\([0-9]*\).*/\1 \2 \3/p' $tracing/events/raw_syscalls/sys_enter/hist |
        awk 'NR == FNR { name[$1] = $2; next } ($1 in name) { n[name[$1] "|" $2] += $3; total += $3 }
             END { for (k in n) printf "%s=%d; ", k, n[k]; printf "total %d", total }' /tmp/tids -)
    echo "!$syscall_hist" >$tracing/events/raw_syscalls/sys_enter/trigger 2>/dev/null
    info "$2: xendisk system calls by thread|call: $counts"
}

# kprofile_start PATTERN, kprofile_report LABEL (only with e2e_kprofile=1 on the kernel command line,
# tools/e2e/compare --profile): a sampling profile of the threads whose name matches the shell
# pattern PATTERN (XenDisk's ring threads, "blkif *", or blkback's ring threads, named
# DOMID.DEVICE-RING by xen-blkback: "[0-9]*.xvd*-[0-9]*"), kernel and user time alike. perf does
# not run in this dom0 and Debian's kernel has no function profiler; the timer interrupt is the clock:
# a stacktrace trigger on timer:hrtimer_expire_entry, filtered to those threads, records the whole
# kernel stack each time a timer (the scheduler tick, 250 Hz) expires while one of them is current.
# What lies below the hypervisor callback's entry frame is the interrupted code: a kernel function,
# or nothing (the thread was in user space). The report counts samples by the interrupted code's
# innermost function, by its innermost four frames, and by the way the kernel was entered (the
# system call, a page fault).
kprofile=$(grep -c 'e2e_kprofile=1' /proc/cmdline)
kprofile_event=$tracing/events/timer/hrtimer_expire_entry
kprofile_trigger=
kprofile_start() {
    [ "$kprofile" = 1 ] || return 0
    [ -d $tracing/events ] || mount -t tracefs nodev $tracing 2>/dev/null
    tids=$(for comm in /proc/[0-9]*/task/[0-9]*/comm; do
               # shellcheck disable=SC2254 # the pattern is the argument
               case "$(cat "$comm" 2>/dev/null)" in $1) tid=${comm%/comm}; echo "${tid##*/}" ;; esac
           done)
    [ -n "$tids" ] || { info "kernel profile: no thread named $1"; return 0; }
    # The buffer is cleared and the trigger set with recording off (clearing a buffer that a trigger
    # writes into from the timer interrupt hung dom0 once); recording is on again before the job,
    # which the system-call histogram needs too. A trigger with a filter is removed by its whole text.
    kprofile_trigger="stacktrace if $(echo $tids | sed 's/\([0-9][0-9]*\)/common_pid == \1/g; s/ common_pid/ || common_pid/g')"
    echo 0 >$tracing/tracing_on
    [ "$(cat $tracing/buffer_size_kb)" = 8192 ] || echo 8192 >$tracing/buffer_size_kb
    echo >$tracing/trace
    echo "$kprofile_trigger" >$kprofile_event/trigger ||
        { info "kernel profile: cannot set the stacktrace trigger ($(tail -n 2 $tracing/error_log 2>/dev/null | tr '\n' ' '))"; kprofile_trigger=; }
    echo 1 >$tracing/tracing_on
}
kprofile_report() {
    [ "$kprofile" = 1 ] && [ -n "$kprofile_trigger" ] || return 0
    echo 0 >$tracing/tracing_on
    echo "!$kprofile_trigger" >$kprofile_event/trigger || info "kernel profile: cannot remove the stacktrace trigger"
    kprofile_trigger=
    # Frames are listed innermost first: the timer's own, the interrupt's, its entry from the
    # hypervisor callback, then the interrupted code, if the interrupt came in kernel mode.
    awk '
        function flush() {
            if (!open) return
            open = 0; samples++
            for (i = 1; i <= n; i++) if (frame[i] ~ /^(asm_)?exc_xen_hypervisor_callback$|^xen_pv_evtchn_do_upcall$|^(asm_)?sysvec_|^(asm_)?common_interrupt$/) break
            while (i < n && frame[i + 1] ~ /^(asm_)?exc_xen_hypervisor_callback$|^xen_pv_evtchn_do_upcall$/) i++
            if (i > n) { unparsed++; if (example == "") { example = frame[1]; for (k = 2; k <= n; k++) example = example "<" frame[k] } return }
            if (i == n) { user++; return }
            leaf[frame[i + 1]]++
            s = frame[i + 1]; for (k = i + 2; k <= n && k <= i + 4; k++) s = s "<" frame[k]
            stack[s]++
            # Where the kernel was entered from user space: a system call (by name), a page fault, or else its outermost frame.
            entry = "outermost " frame[n]
            for (k = i + 1; k <= n; k++) {
                # __x64_sys_X is often a tail call and leaves no frame; __do_sys_X, when not inlined, does.
                if (frame[k] ~ /^__x64_sys_|^__do_sys_/) { name = frame[k]; sub(/^__x64_sys_|^__do_sys_/, "", name); entry = "system call " name; break }
                if (frame[k] ~ /^(asm_)?exc_page_fault$/) { entry = "page fault"; break }
            }
            entries[entry]++
        }
        /<stack trace>/ { flush(); open = 1; n = 0; next }
        /^ => / { if (open) frame[++n] = $2; next }
        { flush() }
        END {
            flush()
            printf "H %d samples: %d in user space, %d in the kernel, %d not understood%s\n", samples, user, samples - user - unparsed, unparsed, example == "" ? "" : " (one: " example ")"
            for (f in leaf) if (leaf[f] * 100 >= samples) printf "L %d %s\n", leaf[f], f
            for (f in stack) if (stack[f] * 50 >= samples) printf "S %d %s\n", stack[f], f
            for (f in entries) if (entries[f] * 100 >= samples) printf "E %d %s\n", entries[f], f
        }' $tracing/trace >/tmp/kprofile
    echo >$tracing/trace
    echo 1 >$tracing/tracing_on
    profile="$(sed -n 's/^H //p' /tmp/kprofile); innermost kernel function: $(sed -n 's/^L //p' /tmp/kprofile | sort -rn | head -n 20 | tr '\n' ';'); innermost four kernel frames: $(sed -n 's/^S //p' /tmp/kprofile | sort -rn | head -n 15 | tr '\n' ';'); kernel samples by way in: $(sed -n 's/^E //p' /tmp/kprofile | sort -rn | head -n 12 | tr '\n' ';')"
    info "$1: kernel profile (timer-interrupt samples; functions of at least 1% and four-frame stacks of at least 2% of all samples shown): $profile"
}

# sample_threads PID FILE: once a second until FILE.stop exists, one line per thread of PID that is
# running or runnable (state R): its name and its system call number ("running": in user space).
# perf does not run in this dom0; this says which of XenDisk's threads spend the CPU, and whether
# in the kernel (which call) or in user space.
sample_threads() {
    while [ ! -e "$2.stop" ]; do
        for task in /proc/"$1"/task/*; do
            state=$(sed 's/^[0-9]* (.*) \([A-Z]\) .*/\1/' "$task/stat" 2>/dev/null)
            [ "$state" = R ] || continue
            echo "$(cat "$task/comm" 2>/dev/null)|$(cut -d' ' -f1 "$task/syscall" 2>/dev/null)"
        done >>"$2"
        sleep 1
    done
}

# backend_counters BACKEND: the backend's own view of the guest's xvda, into the log (E2E-LOG lines):
# XenDisk's `xendisk status` and its metrics (grant operations, persistent-grant lookups,
# back-pressure, batch sizes), blkback's sysfs statistics.
backend_counters() {
    case "$1" in
    xendisk-*)
        if xendisk status >/tmp/status.log 2>&1; then
            sed 's/^/E2E-LOG xendisk-status| /' /tmp/status.log
        else
            echo "E2E-LOG xendisk-status| failed: $(tr '\n' ' ' </tmp/status.log)"
            show /var/log/xendisk.log 20
        fi
        wget -q -O - http://127.0.0.1:9464/metrics 2>&1 | grep -v -e '^#' -e '_bucket{' | sed 's/^/E2E-LOG xendisk-metrics| /' ;;
    blkback)
        for f in /sys/bus/xen-backend/devices/vbd-*-51712/statistics/*; do
            [ -f "$f" ] && echo "E2E-LOG blkback-statistics| $(basename "$f") $(cat "$f")"
        done ;;
    esac
}

# run_bench BACKEND ROUND DISK: one guest (two vCPUs, like the checks' feature guest) runs every job
# on xvda; its numbers become RESULT lines. dom0's busy CPU time is taken from the guest's "job
# starts" line to its numbers, less what dom0 spends with the guest idle (measured for 10 s after the
# jobs: the polling of this script, xenconsoled), and divided by the requests fio counted, scaled from
# the measured 30 s to the 35 s with the ramp.
run_bench() {
    name=e2e-$1-$2
    write_config $name bench /guest/domU-fio.cpio 512 2 "'$3'" ""
    create_guest $name "$1-guest-$2" || return
    : >/tmp/job-cpu
    for job in $jobs; do
        follow_guest $name "GUEST: INFO job $job starts" 900 || break
        cpu_snapshot /tmp/cpu-job
        case "$1" in
            xendisk-*) syscalls_start; kprofile_start 'blkif *'; rm -f /tmp/samples.stop; sample_threads "$xendisk_pid" /tmp/samples & sampler=$! ;;
            blkback) kprofile_start '[0-9]*.xvd*-[0-9]*' ;;
        esac
        follow_guest $name "GUEST: DATA bench-$job=" 900
        found=$?
        [ -n "${sampler:-}" ] && { : >/tmp/samples.stop; wait $sampler; sampler=; }
        [ $found -eq 0 ] || break
        echo "$job $(cpu_busy_since /tmp/cpu-job)" >>/tmp/job-cpu
        case "$1" in xendisk-*) syscalls_report "$xendisk_pid" "$1 round $2 job $job" ;; esac
        case "$1" in xendisk-*|blkback) kprofile_report "$1 round $2 job $job" ;; esac
        [ -s /tmp/samples ] && info "$1 round $2 job $job: xendisk threads seen running or waiting, by count of one-second samples in state R (thread|system call): $(sort /tmp/samples | uniq -c | sort -rn | head -n 12 | tr -s ' ' | tr '\n' ';')"
        rm -f /tmp/samples
        # The guest waits for this before its next job (domU/init, task_bench).
        xenstore-write "/local/domain/$(xl domid $name)/data/e2e-job-$job" 1
    done
    if follow_guest $name "GUEST: WAIT counters" 1200; then
        cpu_snapshot /tmp/cpu-idle
        sleep 10
        idle=$(cpu_busy_since /tmp/cpu-idle)
        info "$1 round $2: dom0 CPU for 10 s after the jobs, the guest idle: $(cpu_since /tmp/cpu-idle)"
        case "$1" in xendisk-*) info "$1 round $2: xendisk threads by CPU seconds: $(thread_cpu "$xendisk_pid")" ;; esac
        qemu_pid=$(pgrep -f "xen-domid $(xl domid $name) " | head -n 1)
        [ -n "$qemu_pid" ] && info "$1 round $2: qemu-system-xen threads by CPU seconds: $(thread_cpu "$qemu_pid")"
        # CPU seconds per domain since it started (Time(s)); a leftover domain would show here too.
        xl list 2>&1 | sed 's/^/E2E-LOG xl-list| /'
        backend_counters "$1"
        xenstore-write "/local/domain/$(xl domid $name)/data/e2e-go" 1
    fi
    if follow_guest $name "GUEST: DONE" 300; then
        for job in $jobs; do
            numbers=$(guest_data $name "bench-$job")
            [ -n "$numbers" ] || continue
            cpu=$(awk -v job="$job" -v idle="${idle:-0 1}" -v numbers="$numbers" '
                $1 == job {
                    split(idle, i, " "); busy = $2 - (i[2] > 0 ? i[1] * $3 / i[2] : 0); if (busy < 0) busy = 0
                    n = split(numbers, kv, " "); iops = 0
                    for (k = 1; k <= n; k++) { split(kv[k], p, "="); if (p[1] == "read_iops" || p[1] == "write_iops") iops += p[2] }
                    if (iops > 0) printf "%.0f", busy * 10000 / (iops * 35) }' /tmp/job-cpu)
            say "RESULT $1 $2 $job $numbers${cpu:+ cpu_us_per_req=$cpu}"
        done
        wait_guest_gone $name "$1-guest-$2-poweroff"
    else
        fail "$1-guest-$2-poweroff" "no final line from the guest"
        xl destroy $name 2>/dev/null
    fi
}

# disk_of BACKEND ROUND: the disk line for the backend's turn; overlays are made afresh for each,
# and the previous turn's are removed first: dom0's image directory is a RAM file system, with room
# for the raw file and one overlay of its size (a bitmap overlay takes its full size at once).
disk_of() {
    rm -f $images/bench-q.qcow2 $images/bench-x.qcow2 $images/bench-x.bitmap
    case "$1" in
        blkback) echo "vdev=xvda,access=rw,script=e2e-phy,target=/dev/loop0" ;;
        qdisk-raw) echo "vdev=xvda,access=rw,backendtype=qdisk,format=raw,target=$images/bench.img" ;;
        qdisk-qcow2)
            rm -f $images/bench-q.qcow2
            qemu-img create -q -f qcow2 -b $images/bench.img -F raw $images/bench-q.qcow2 >&2
            echo "vdev=xvda,access=rw,backendtype=qdisk,format=qcow2,target=$images/bench-q.qcow2" ;;
        xendisk-raw) echo "vdev=xvda,access=rw,script=xendisk,target=raw:$images/bench.img" ;;
        xendisk-phy) echo "vdev=xvda,access=rw,script=xendisk,target=raw:/dev/loop0" ;;
        xendisk-qcow2) rm -f $images/bench-x.qcow2; echo "vdev=xvda,access=rw,script=xendisk,target=cow:$images/bench.img,$images/bench-x.qcow2" ;;
        xendisk-bitmap) rm -f $images/bench-x.bitmap; echo "vdev=xvda,access=rw,script=xendisk,target=cow:$images/bench.img,$images/bench-x.bitmap,format=bitmap" ;;
    esac
}

round=1
while [ $round -le "$rounds" ]; do
    for backend in $backends; do
        case $backend in
            blkback) modprobe xen-blkback && pass blkback-start-$round || { fail blkback-start-$round "modprobe xen-blkback failed"; continue; } ;;
        esac
        if [ $backend = "$first_xendisk" ]; then start_xendisk xendisk-start-$round || break; fi
        run_bench $backend $round "$(disk_of $backend $round)"
        case $backend in
            blkback)
                # blkback must be gone before XenDisk serves vbd devices.
                if modprobe -r xen-blkback && ! grep -q '^xen_blkback ' /proc/modules; then
                    pass blkback-stop-$round
                else
                    fail blkback-stop-$round "xen-blkback could not be unloaded"; finish
                fi ;;
        esac
        [ $backend = "$last_xendisk" ] && stop_xendisk xendisk-stop-$round
    done
    alive "${xendisk_pid:-0}" && stop_xendisk xendisk-stop-$round
    round=$((round + 1))
done
no_stale_backend_nodes no-stale-backend-nodes
skip_rest "$plan" "not reached: an earlier step of its round failed"
