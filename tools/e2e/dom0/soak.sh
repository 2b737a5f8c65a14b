# The soak scenario (busybox sh, sourced by /init with lib.sh; run by tools/e2e/soak): several guests,
# each with two disks served by XenDisk (xvda a qcow2 overlay over a shared raw base, xvdb a bitmap
# overlay over a second shared base), run verified fio passes on both disks at once (domU/init, task
# soak) for a fixed time, while dom0 reboots guests, detaches and re-attaches their xvdb and restarts
# XenDisk. At the end, with every guest gone, XenDisk's memory, open file descriptors and grant
# mappings must be back at their baseline, and no guest may have seen an error.
#
# Two phases, both with the same guests and disks:
#   warm-up  the guests run; XenDisk is killed (SIGKILL) and started again, then stopped (SIGTERM)
#            and started again; then one guest reboots and another guest's xvdb is detached and
#            attached again; the guests stop. The baseline is taken now, with no guest left: the
#            figures of the process that will serve the soak, after it has served every kind of event
#            once (rings resumed after a restart, a rebooted guest's new devices, a re-attached disk;
#            its thread pool, buffer pools and GC heap grown to their working size). A process's
#            memory can only be compared with the same process's: a restart starts from nothing, so
#            the restarts come first, and the reboot and re-attach after them.
#   soak     the guests run again for e2e_minutes; every e2e_interval seconds one guest reboots and
#            another's xvdb is detached and attached again (rotating); the guests stop, and the same
#            figures are taken again from the same process.
# Kernel command line words: e2e_minutes (soak phase, default 10), e2e_guests (default 2, at most 3),
# e2e_warmup (minimum minutes of the warm-up, default 2), e2e_interval (seconds, default 90).
# The host reads the lines
#   E2E: RESULT figure NAME baseline=N end=N limit=N fresh=N peak=N unit=U
#   E2E: RESULT count NAME=N ...
# shellcheck disable=SC2154 # images, xendisk_pid and the helpers come from lib.sh, sourced by /init first

minutes=10 guests=2 warmup=2 interval=90
for word in $(cat /proc/cmdline); do
    case "$word" in
        e2e_minutes=*) minutes=${word#*=} ;;
        e2e_guests=*) guests=${word#*=} ;;
        e2e_warmup=*) warmup=${word#*=} ;;
        e2e_interval=*) interval=${word#*=} ;;
    esac
done
names=
i=1
while [ $i -le "$guests" ]; do names="$names e2e-s$i"; i=$((i + 1)); done
names=${names# }
# 512 MiB per guest, as the crash checks' guest: the initramfs with fio's layer (about 90 MiB) unpacks
# into the guest's RAM file system, and with less memory fio's libraries are cut off. tools/e2e/soak
# gives QEMU's machine the memory for them.
memory=512

plan="dom0-modules dom0-toolstack soak-xendisk-start soak-images
 warmup-guests-create warmup-guests-running warmup-kill warmup-restart-stop warmup-restart-start
 warmup-reboot warmup-detach-attach warmup-guests-poweroff warmup-no-stale-nodes soak-baseline
 soak-guests-create soak-guests-running soak-events soak-guests-poweroff soak-no-stale-nodes
 soak-bases-unchanged soak-overlays-check soak-overlay-contents soak-consoles-clean
 soak-rss soak-heap-steady soak-fds soak-grant-mappings soak-threads soak-xendisk-same-process"
say "PLAN $(echo $plan)"
info "scenario soak: $guests guest(s) ($names, $memory MiB, 2 vCPUs each), warm-up at least $warmup min, soak $minutes min, an event every $interval s, dom0 kernel $(uname -r)"

start_toolstack
start_xendisk soak-xendisk-start || finish
kills=0 terms=0 reboots=0 detaches=0

# --- figures --------------------------------------------------------------------------------------
# figures PID: "rss_kib anon_kib fds gntdev_kib gntdev_vmas threads persistent_grants devices".
# Grant mappings are what the kernel holds for the process: every xengnttab map is an mmap of
# /dev/xen/gntdev, so the gntdev areas in /proc/PID/smaps are the guest pages mapped right now; the
# service's own count of persistent grants comes from its metrics endpoint.
figures() {
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status")
    anon=$(awk '/^RssAnon:/ { print $2 }' "/proc/$1/status")
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$1/status")
    fds=$(ls "/proc/$1/fd" | wc -l)
    gnt=$(awk '/^[0-9a-f]+-[0-9a-f]+ / { g = ($0 ~ /gntdev/); if (g) n++ } g && /^Size:/ { s += $2 } END { printf "%d %d", s, n }' "/proc/$1/smaps")
    wget -q -O /tmp/metrics http://127.0.0.1:9464/metrics 2>/dev/null || : >/tmp/metrics
    pg=$(grep '^xendisk_persistent_grant_mapped' /tmp/metrics | sed 's/.*} //' | awk '{ s += $1 } END { print s + 0 }')
    dev=$(grep '^xendisk_devices' /tmp/metrics | sed 's/.*} //' | awk '{ s += $1 } END { print s + 0 }')
    echo "${rss:-0} ${anon:-0} $fds $gnt $threads $pg $dev"
}
field() { echo "$1" | cut -d' ' -f"$2"; }
# sample_peak: the highest figures while guests run (for the report; nothing is judged on them).
peak="0 0 0 0 0 0 0 0"
sample_peak() {
    alive "$xendisk_pid" || return 0
    now=$(figures "$xendisk_pid")
    new=
    for k in 1 2 3 4 5 6 7 8; do
        a=$(field "$now" $k); b=$(field "$peak" $k)
        [ "$a" -gt "$b" ] && new="$new $a" || new="$new $b"
    done
    peak=${new# }
}
# status_kib FILE KEY: a byte figure of a `xendisk status --json` answer in KiB (0 when absent);
# status_tracked FILE: its "tracked" object (device objects, shared disks, open overlays) on one line.
status_kib() { v=$(sed -n "s/.*\"$2\": *\([0-9]*\).*/\1/p" "$1"); echo $(( ${v:-0} / 1024 )); }
status_tracked() { tr -d ' \n' <"$1" | sed -n 's/.*"tracked":{\([^}]*\)}.*/\1/p'; }

# held LABEL: the service's managed heap after a full collection and what it keeps per device,
# printed after each event slot of the soak, so that a growth can be pinned on the event that
# leaves it (a reboot: a new domain of the same VM; a detach/attach: the same backend path again).
held() {
    xendisk status --collect --json >/tmp/status-held.json 2>&1 || return 0
    h=$(status_kib /tmp/status-held.json managedHeapBytes)
    info "$1: managed heap $h KiB after a full collection; kept: $(status_tracked /tmp/status-held.json); resident $(awk '/^VmRSS:/ { print $2 }' "/proc/$xendisk_pid/status") KiB"
    [ "$h" -gt 0 ] && echo "$h" >>/tmp/held-heaps
}

# idle_figures LABEL: the figures (in $idle) once the service has been idle for 20 s (persistent
# grants of closed rings are gone with their rings; nothing allocates), printed for the log.
# Before the figures, the service runs a full compacting collection (`xendisk status --collect`):
# without it an idle .NET process keeps whatever it allocated since its last collection, and the
# figures could not tell garbage from a leak. Its managed heap, the collector's committed memory and
# the heap's free part (KiB) land in $idle_managed; where the resident memory lies (malloc's heap,
# anonymous mappings, stacks, files) is printed from smaps.
idle_figures() {
    sleep 20
    xendisk status --collect --json >/tmp/status-$1.json 2>&1 || info "$1: xendisk status --collect failed: $(head -c 300 /tmp/status-$1.json)"
    idle_managed="$(status_kib /tmp/status-$1.json managedHeapBytes) $(status_kib /tmp/status-$1.json managedCommittedBytes) $(status_kib /tmp/status-$1.json managedFragmentedBytes)"
    info "$1 resident memory by mapping (KiB): $(awk '/^[0-9a-f]+-[0-9a-f]+ / { n = $6; if (n == "") n = "anonymous"; else if (n ~ /^\//) n = "files" } /^Rss:/ { r[n] += $2 } END { for (k in r) if (r[k] > 0) printf "%s=%d ", k, r[k] }' "/proc/$xendisk_pid/smaps")"
    info "$1 kept by the service: $(status_tracked /tmp/status-$1.json)"
    idle=$(figures "$xendisk_pid")
    [ -s /tmp/metrics ] || info "$1: the metrics endpoint (127.0.0.1:9464) did not answer; persistent grants and devices read 0"
    info "$1 figures (rss_kib anon_kib fds gntdev_kib gntdev_areas threads persistent_grants devices): $idle; managed heap, committed and free (fragmented) KiB after a full collection: $idle_managed"
}
idle_figures fresh
fresh=$idle fresh_managed=$idle_managed

# --- images ---------------------------------------------------------------------------------------
mkdir -p $images
dd if=/dev/urandom of=$images/base.img bs=1M count=16 status=none
dd if=/dev/urandom of=$images/base-b.img bs=1M count=8 status=none
base_md5=$(md5sum <$images/base.img | cut -d' ' -f1)
base_b_md5=$(md5sum <$images/base-b.img | cut -d' ' -f1)
ok=yes
i=1
for g in $names; do
    if ! xendisk image create -f qcow2 -b $images/base.img -F raw $images/soak-$i-a.qcow2 >/tmp/image-create.log 2>&1; then
        show /tmp/image-create.log; ok=no
    fi
    # xvdb's bitmap overlay is created by the provider when the device first opens (cow: target).
    rm -f $images/soak-$i-b.bitmap
    disk_a="vdev=xvda,access=rw,script=xendisk,target=qcow2:$images/soak-$i-a.qcow2"
    disk_b="vdev=xvdb,access=rw,script=xendisk,target=cow:$images/base-b.img,$images/soak-$i-b.bitmap,format=bitmap"
    echo "$disk_b" >/tmp/disk-b-$g
    write_config $g soak /guest/domU-fio.cpio $memory 2 "'$disk_a', '$disk_b'" "e2e_label=$g"
    i=$((i + 1))
done
cat /guest/domU.cpio /guest/fio.cpio >/guest/domU-fio.cpio && rm /guest/fio.cpio
if [ $ok = yes ]; then pass soak-images; else fail soak-images "xendisk image create failed"; finish; fi

# --- guests ---------------------------------------------------------------------------------------
# Every console line of a phase is kept in /tmp/soak-PHASE-NAME.log (the guest's console log may
# start afresh when xl restarts a rebooted domain); patterns are looked for there.
soak_copy() {
    before=$(cat "/tmp/console-$1.copied" 2>/dev/null)
    copy_console "$1"
    [ "$(cat "/tmp/console-$1.copied" 2>/dev/null)" != "$before" ] && cat "/tmp/console-$1.new" >>"/tmp/soak-$phase-$1.log"
    return 0
}
copy_all() { for g in $names; do soak_copy $g; done; }
# soak_follow "NAME..." ERE SECONDS: copies every guest's console until each NAME has shown ERE.
soak_follow() {
    waited=0
    while :; do
        copy_all
        all=yes
        for g in $1; do grep -qE -- "$2" "/tmp/soak-$phase-$g.log" 2>/dev/null || all=no; done
        [ $all = yes ] && return 0
        [ $waited -ge "$3" ] && return 1
        waited=$((waited + 2))
        sleep 2
    done
}
# idle_until UPTIME: copies consoles, and samples the figures every 15 s, until dom0's uptime reaches UPTIME.
sampled=0
idle_until() {
    while [ "$(uptime_s)" -lt "$1" ]; do
        copy_all
        [ $(($(uptime_s) - sampled)) -ge 15 ] && { sample_peak; sampled=$(uptime_s); }
        sleep 3
    done
}
uptime_s() { cut -d. -f1 /proc/uptime; }
write_data() { xenstore-write "/local/domain/$(xl domid "$1")/data/$2" "$3"; }

# start_guests PHASE: creates every guest one after the other and waits until all run their passes.
start_guests() {
    phase=$1
    ok=yes
    for g in $names; do
        : >"/tmp/soak-$phase-$g.log"
        forget_console $g
        if ! xl create /etc/xen/$g.cfg >/tmp/xl-create-$g.log 2>&1; then
            show /tmp/xl-create-$g.log 30; ok=no
        fi
    done
    if [ $ok = yes ]; then pass $phase-guests-create; else fail $phase-guests-create "xl create failed"; return 1; fi
    if soak_follow "$names" 'GUEST: WAIT soak$' 900; then pass $phase-guests-running; else fail $phase-guests-running "not every guest started its passes within 900 s"; return 1; fi
}
# stop_guests PHASE: asks every guest to stop after its current pass; they report and power off.
stop_guests() {
    running=
    for g in $names; do guest_running $g && { write_data $g soak-stop 1; running="$running $g"; }; done
    all_ran=yes
    [ "$running" = " $names" ] || { all_ran=no; fail $1-guests-poweroff "not every guest was running at the stop (running:${running:- none})"; }
    if [ -z "$running" ] || soak_follow "$running" 'GUEST: DONE$' 900; then
        gone=yes
        for g in $running; do
            n=0
            while guest_running $g; do n=$((n + 1)); [ $n -gt 120 ] && break; sleep 1; done
            guest_running $g && gone=no
        done
        if [ $gone = no ]; then fail $1-guests-poweroff "a guest still exists 120 s after its last line"; elif [ $all_ran = yes ]; then pass $1-guests-poweroff; fi
    else
        fail $1-guests-poweroff "not every guest finished within 900 s of the stop request"
    fi
    for g in $names; do guest_running $g && xl destroy $g 2>/dev/null; done
    copy_all
}
# request_reboot NAME: the guest writes and flushes a marker, reboots (xl recreates the domain), and
# its next boot checks the marker; reboot_done NAME STEP waits for that next boot.
request_reboot() {
    boot=$(sed -n 's/.*GUEST: DATA soak-boot=//p' "/tmp/soak-$phase-$1.log" | tail -n 1)
    next_boot=$((${boot:-1} + 1))
    write_data "$1" soak-reboot 1
}
reboot_done() {
    waited=0 missing=0
    while ! soak_follow "$1" "GUEST: DATA soak-boot=$next_boot\$" 30; do
        waited=$((waited + 30))
        # xl's daemon recreates the domain; when it cannot (a device not added in time), the domain is gone.
        if guest_running "$1"; then missing=0; else missing=$((missing + 1)); fi
        if [ $missing -ge 3 ] || [ $waited -ge 900 ]; then
            show "/var/log/xen/xl-$1.log" 20; show /var/log/xendisk.log 40
            fail "$2" "$1 did not come back as boot $next_boot ($waited s; domain $(guest_running "$1" && echo exists || echo gone))"
            return 1
        fi
    done
    # How long the rebooted domain's new devices took to InitWait and to their open disk (events
    # 1004 and 1028), for the report: libxl allows 10 s for the first and its script 40 s for the second.
    grep -E "vbd/[0-9]+/[0-9]+: (waiting for the frontend \(InitWait\)|disk open) " /var/log/xendisk.log | tail -n 4 | sed "s/^/E2E-LOG $2-timing| /"
    reboots=$((reboots + 1)); pass "$2"
}
# detach_attach NAME STEP: the guest puts a marker on xvdb and lets go of it; dom0 detaches xvdb
# (the backend device goes), attaches it again (a new backend device over the same overlay), and the
# guest finds its marker.
detach_seq=0
detach_attach() {
    detach_seq=$((detach_seq + 1)); n=$detach_seq
    domid=$(xl domid "$1")
    write_data "$1" soak-detach $n
    if ! soak_follow "$1" "GUEST: WAIT detach-xvdb-$n\$" 600; then fail "$2" "$1 did not let go of xvdb within 600 s"; return 1; fi
    if ! xl block-detach "$1" xvdb >/tmp/xl-detach.log 2>&1; then show /tmp/xl-detach.log; fail "$2" "xl block-detach failed"; return 1; fi
    k=0
    while xenstore-read "/local/domain/0/backend/vbd/$domid/51728/state" >/dev/null 2>&1; do k=$((k + 1)); [ $k -gt 30 ] && break; sleep 1; done
    if ! soak_follow "$1" "GUEST: WAIT attach-xvdb-$n\$" 300; then fail "$2" "$1 still sees xvdb after the detach"; return 1; fi
    if ! xl block-attach "$1" "$(cat "/tmp/disk-b-$1")" >/tmp/xl-attach.log 2>&1; then
        # libxl gives the new backend device 10 s to reach InitWait; the service's side of it is in its log.
        show /tmp/xl-attach.log; show /var/log/xendisk.log 40
        fail "$2" "xl block-attach failed"; return 1
    fi
    if soak_follow "$1" "GUEST: PASS soak-xvdb-back-$n\$" 600; then
        detaches=$((detaches + 1)); pass "$2"
    else
        fail "$2" "$1 did not find its xvdb marker after the attach (see its FAIL line)"
    fi
}
# restart_kill STEP: SIGKILL under guest I/O, then a new instance (its in-flight records redo what
# the killed one left unanswered); restart_term STEP: SIGTERM, then a new instance.
restart_kill() {
    t_down=$(now_cs)
    kill -KILL "$xendisk_pid" 2>/dev/null
    wait "$xendisk_pid" 2>/dev/null
    echo "--- $1: SIGKILL (dom0 uptime $(uptime_s)s)" >>/var/log/xendisk.log
    rm -f /run/xendisk/control.sock
    start_xendisk "$1" || return 1
    kills=$((kills + 1))
    info "$1: down $(cs_text $(($(now_cs) - t_down))) s"
}
restart_term() {
    t_down=$(now_cs)
    stop_xendisk "$1-stop" || return 1
    start_xendisk "$1-start" || return 1
    terms=$((terms + 1))
    info "$1: down $(cs_text $(($(now_cs) - t_down))) s"
}
# other NAME: the next guest after NAME (itself when there is one).
other() {
    set -- "$1" $names $names
    g=$1; shift
    while [ "$1" != "$g" ]; do shift; done
    echo "${2:-$g}"
}
first=${names%% *}

# --- warm-up --------------------------------------------------------------------------------------
t_warm=$(uptime_s)
if start_guests warmup; then
    idle_until $(($(uptime_s) + 15))
    restart_kill warmup-kill
    idle_until $(($(uptime_s) + 15))
    restart_term warmup-restart
    idle_until $(($(uptime_s) + 15))
    request_reboot "$first"
    second=$(other "$first")
    [ "$second" = "$first" ] && reboot_done "$first" warmup-reboot
    detach_attach "$second" warmup-detach-attach
    [ "$second" != "$first" ] && reboot_done "$first" warmup-reboot
    idle_until $((t_warm + warmup * 60))
    stop_guests warmup
fi
no_stale_backend_nodes warmup-no-stale-nodes
if ! alive "$xendisk_pid"; then fail soak-baseline "xendisk serve is not running after the warm-up"; skip_rest "$plan" "not reached"; finish; fi
baseline_pid=$xendisk_pid
idle_figures baseline
baseline=$idle baseline_managed=$idle_managed
pass soak-baseline

# --- soak -----------------------------------------------------------------------------------------
phase=soak
warm_reboots=$reboots warm_detaches=$detaches
if start_guests soak; then
    t_soak=$(uptime_s)
    t_end=$((t_soak + minutes * 60))
    slot=0 target=$first events_ok=yes
    while :; do
        next=$((t_soak + (slot + 1) * interval))
        [ $next -ge $t_end ] && break
        idle_until $next
        request_reboot "$target"
        second=$(other "$target")
        [ "$second" = "$target" ] && reboot_done "$target" soak-reboot-$((slot + 1))
        detach_attach "$second" soak-detach-attach-$((slot + 1)) || events_ok=no
        [ "$second" != "$target" ] && reboot_done "$target" soak-reboot-$((slot + 1))
        target=$second slot=$((slot + 1))
        held "after event slot $slot"
    done
    idle_until $t_end
    info "soak: $slot event slot(s) in $(($(uptime_s) - t_soak)) s"
    if [ $((reboots - warm_reboots)) -ge 1 ] && [ $((detaches - warm_detaches)) -ge 1 ] && [ $events_ok = yes ]; then
        pass soak-events
    else
        fail soak-events "$((reboots - warm_reboots)) reboot(s) and $((detaches - warm_detaches)) detach-attach(es) completed in the soak (at least one each expected; make e2e_minutes longer than e2e_interval)"
    fi
    stop_guests soak
fi
no_stale_backend_nodes soak-no-stale-nodes

# --- the disks ------------------------------------------------------------------------------------
if [ "$(md5sum <$images/base.img | cut -d' ' -f1)" = "$base_md5" ] && [ "$(md5sum <$images/base-b.img | cut -d' ' -f1)" = "$base_b_md5" ]; then
    pass soak-bases-unchanged
else
    fail soak-bases-unchanged "a shared base changed"
fi
# check_image NAME COMMAND...: exit 0 is clean; 3 is leaked clusters only (space lost, no data; what
# a killed writer may leave, repaired by check -r leaks), reported but not a failure; anything else is.
check_image() {
    name=$1; shift
    "$@" >/tmp/check.log 2>&1; rc=$?
    info "$name: $* exited $rc: $(tail -n 3 /tmp/check.log | tr '\n' ' ')"
    [ $rc -eq 0 ] || [ $rc -eq 3 ] || { show /tmp/check.log 10; bad="$bad $name (status $rc)"; }
}
bad=
i=1
for g in $names; do
    check_image soak-$i-a.qcow2 qemu-img check -f qcow2 $images/soak-$i-a.qcow2
    check_image soak-$i-b.bitmap xendisk image check -f bitmap $images/soak-$i-b.bitmap
    i=$((i + 1))
done
if [ -z "$bad" ]; then pass soak-overlays-check; else fail soak-overlays-check "$bad"; fi
# What QEMU (qcow2) and xendisk (bitmap) read through each overlay and its base is what the guest read last.
bad=
i=1
for g in $names; do
    want_a=$(sed -n 's/.*GUEST: DATA final-md5-xvda=//p' /tmp/soak-soak-$g.log | tail -n 1)
    want_b=$(sed -n 's/.*GUEST: DATA final-md5-xvdb=//p' /tmp/soak-soak-$g.log | tail -n 1)
    rm -f /tmp/soak.raw
    qemu-img convert -f qcow2 -O raw $images/soak-$i-a.qcow2 /tmp/soak.raw >/tmp/convert.log 2>&1 || show /tmp/convert.log 10
    got=$(md5sum </tmp/soak.raw | cut -d' ' -f1)
    [ -n "$want_a" ] && [ "$got" = "$want_a" ] || bad="$bad $g xvda: overlay reads $got, guest read ${want_a:-nothing};"
    rm -f /tmp/soak.raw
    xendisk image convert -f bitmap -O raw $images/soak-$i-b.bitmap /tmp/soak.raw >/tmp/convert.log 2>&1 || show /tmp/convert.log 10
    got=$(md5sum </tmp/soak.raw | cut -d' ' -f1)
    [ -n "$want_b" ] && [ "$got" = "$want_b" ] || bad="$bad $g xvdb: overlay reads $got, guest read ${want_b:-nothing};"
    rm -f /tmp/soak.raw
    i=$((i + 1))
done
if [ -z "$bad" ]; then pass soak-overlay-contents; else fail soak-overlay-contents "$bad"; fi

# --- the guests' consoles -------------------------------------------------------------------------
# Every guest FAIL line is already a failure of its own (copy_console); here: blkfront's messages on
# the guests' consoles (loglevel=4 shows warnings and errors), in both phases, every boot.
passes=0 xvdb_passes=0 guest_fails=0
for f in /tmp/soak-warmup-*.log /tmp/soak-soak-*.log; do
    [ -f "$f" ] || continue
    passes=$((passes + $(sed -n 's/.*GUEST: DATA soak-passes=//p' "$f" | awk '{ s += $1 } END { print s + 0 }')))
    xvdb_passes=$((xvdb_passes + $(sed -n 's/.*GUEST: DATA soak-xvdb-passes=//p' "$f" | awk '{ s += $1 } END { print s + 0 }')))
    guest_fails=$((guest_fails + $(grep -c 'GUEST: FAIL ' "$f")))
done
grep -v 'GUEST: ' /tmp/soak-warmup-*.log /tmp/soak-soak-*.log 2>/dev/null | grep -Ei 'xvd|blkfront|blkif' | grep -Ei 'error|wrong|disabled|fail' >/tmp/blkfront-errors
blkfront_errors=$(wc -l </tmp/blkfront-errors)
if [ "$blkfront_errors" -eq 0 ] && [ "$guest_fails" -eq 0 ]; then
    pass soak-consoles-clean
else
    fail soak-consoles-clean "$guest_fails guest FAIL line(s), $blkfront_errors blkfront error line(s): $(head -n 3 /tmp/blkfront-errors | tr '\n' ' ')"
fi

# --- XenDisk's figures ----------------------------------------------------------------------------
if alive "$xendisk_pid" && [ "$xendisk_pid" = "$baseline_pid" ]; then
    pass soak-xendisk-same-process
    idle_figures end
    end=$idle end_managed=$idle_managed
else
    fail soak-xendisk-same-process "xendisk serve (pid $baseline_pid at the baseline) is gone or was replaced"
    end="$baseline" end_managed="$baseline_managed"
fi
# judge STEP NAME FIELD LIMIT UNIT: end must not exceed LIMIT; one RESULT line for the host's table.
judge() {
    b=$(field "$baseline" "$3"); e=$(field "$end" "$3")
    say "RESULT figure $2 baseline=$b end=$e limit=$4 fresh=$(field "$fresh" "$3") peak=$(field "$peak" "$3") unit=$5"
    if [ "$e" -le "$4" ]; then pass "$1"; else fail "$1" "$2: $e $5 at the end, baseline $b, limit $4"; fi
}
# Memory, taken after a full collection at the baseline and at the end: the collector keeps some of
# what it freed committed for the next allocations, and malloc keeps freed memory in its arenas, so
# 8 MiB over the baseline is allowed; a leak of a few hundred bytes per request over the tens of
# thousands of requests of a soak, or of a device's worth per device cycle, still goes over it.
# File descriptors and grant mappings are counted exactly: no slack.
judge soak-rss rss_kib 1 $(($(field "$baseline" 1) + 8192)) KiB
say "RESULT figure rss_anon_kib baseline=$(field "$baseline" 2) end=$(field "$end" 2) limit=- fresh=$(field "$fresh" 2) peak=$(field "$peak" 2) unit=KiB"
say "RESULT figure managed_heap_kib baseline=$(field "$baseline_managed" 1) end=$(field "$end_managed" 1) limit=- fresh=$(field "$fresh_managed" 1) peak=- unit=KiB"
say "RESULT figure gc_committed_kib baseline=$(field "$baseline_managed" 2) end=$(field "$end_managed" 2) limit=- fresh=$(field "$fresh_managed" 2) peak=- unit=KiB"
# The heap with guests running, after each event slot: the same guests and devices are live at
# every slot, so a leak per device cycle shows as a heap that keeps rising from slot to slot, while a
# working set reached once (pools, caches) stays level. From the second slot (the first still grows
# into the soak's working set) to the last, at most 1 MiB: about 150 KB per cycle over a 10-minute run.
heaps=$(wc -l </tmp/held-heaps 2>/dev/null || echo 0)
if [ "$heaps" -ge 3 ]; then
    h2=$(sed -n 2p /tmp/held-heaps); hn=$(tail -n 1 /tmp/held-heaps)
    say "RESULT figure managed_heap_per_slot_kib baseline=$h2 end=$hn limit=$((h2 + 1024)) fresh=- peak=- unit=KiB"
    if [ "$hn" -le $((h2 + 1024)) ]; then pass soak-heap-steady; else fail soak-heap-steady "the managed heap rose from $h2 KiB after the second event slot to $hn KiB after the last ($(tr '\n' ' ' </tmp/held-heaps)KiB)"; fi
else
    skip soak-heap-steady "$heaps event slot(s) measured; at least 3 needed (a longer --minutes)"
fi
judge soak-fds open_fds 3 "$(field "$baseline" 3)" fds
judge soak-grant-mappings gntdev_mapped_kib 4 "$(field "$baseline" 4)" KiB
say "RESULT figure gntdev_areas baseline=$(field "$baseline" 5) end=$(field "$end" 5) limit=$(field "$baseline" 5) fresh=$(field "$fresh" 5) peak=$(field "$peak" 5) unit=areas"
say "RESULT figure persistent_grants baseline=$(field "$baseline" 7) end=$(field "$end" 7) limit=0 fresh=$(field "$fresh" 7) peak=$(field "$peak" 7) unit=grants"
# Threads: the .NET thread pool adds and retires workers by itself; a few more at the end is not a leak.
judge soak-threads threads 6 $(($(field "$baseline" 6) + 4)) threads
say "RESULT count reboots=$reboots detach_attach=$detaches sigkill_restarts=$kills sigterm_restarts=$terms fio_passes=$passes xvdb_passes=$xvdb_passes guest_fail_lines=$guest_fails blkfront_error_lines=$blkfront_errors"
[ "$(field "$end" 7)" -eq 0 ] && [ "$(field "$end" 8)" -eq 0 ] || fail soak-grant-mappings "the service still reports $(field "$end" 7) persistent grant(s) and $(field "$end" 8) device(s) with no guest"
skip_rest "$plan" "not reached: an earlier step failed"
kill "$xendisk_pid" 2>/dev/null
