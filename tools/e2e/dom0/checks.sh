# The checks of the baseline and xendisk scenarios (busybox sh, sourced by /init with lib.sh):
# serves disks to PV guests with the backend the scenario names, follows the guests' verdicts on
# their consoles, and checks the bytes on dom0's side. baseline: the kernel's xen-blkback on loop
# devices; xendisk: XenDisk's userspace backend through the `xendisk` hotplug script. The two
# scenarios run the same guest checks; the xendisk scenario adds a restart of the service, two guests
# on qcow2 overlays of one base, and a disk XenDisk must refuse. docs/E2E.md lists every step.

# Steps in order; the host reports any step without a verdict (dom0 stopped before it) as failed.
raw_steps="raw-guest-create guest-blkfront-xvda guest-disk-size guest-read-whole-disk
 guest-odirect-write-read guest-odirect-sector-io guest-fio-verify dom0-sees-guest-writes
 block-attach guest-attach-xvdb guest-attach-read guest-attach-write dom0-sees-attach-write
 block-detach guest-detach-xvdb detach-nodes-removed raw-guest-poweroff"
ext4_steps="ext4-guest-create guest-ext4-mkfs guest-ext4-write guest-reboot guest-ext4-after-reboot
 guest-ext4-file-count guest-multi-queue guest-persistent-grants guest-indirect-segments guest-discard
 ext4-guest-poweroff"
restart_steps="xendisk-stop xendisk-restart restart-guest-create guest-ext4-after-restart
 guest-ext4-file-count-after-restart restart-guest-poweroff"
crash_steps="crash-guest-create crash-kill-1 crash-kill-2 crash-kill-3 crash-kill-4 crash-kill-5
 restart-under-io-stop restart-under-io-start guest-crash-io-verified guest-crash-blkfront-clean
 crash-guest-poweroff restart-io-stalls"
save_steps="save-guest-create xl-save xl-restore guest-save-io-verified
 guest-save-blkfront-clean save-guest-poweroff dom0-sees-restored-writes"
lvm_steps="lvm-volume-group lvm-guests-create guest-la-blkfront-xvda guest-lb-blkfront-xvda
 guest-la-overlay-read-base guest-lb-overlay-read-base guest-la-overlay-write guest-lb-overlay-write
 lvm-guests-ready guest-la-overlay-own-kept guest-lb-overlay-own-kept guest-la-overlay-peer-isolated
 guest-lb-overlay-peer-isolated lvm-guests-poweroff lvm-golden-unchanged lvm-overlay-contents
 lvm-resize-guest-create guest-lr-blkfront-xvda guest-lr-resize-size-at-boot lvm-resize-lvextend
 guest-lr-resize-seen guest-lr-resize-tail-write lvm-resize-poweroff lvm-resize-tail-on-lv"
iscsi_steps="iscsi-target iscsi-login iscsi-guest-create guest-ki-blkfront-xvda guest-ki-disk-size
 guest-ki-read-whole-disk guest-ki-odirect-write-read guest-ki-odirect-sector-io guest-ki-fio-verify
 iscsi-guest-poweroff iscsi-lun-contents iscsi-logout"
destroy_steps="idle-guest-create destroy-running-guest"
overlay_steps="overlay-images overlay-guests-create guest-a-blkfront-xvda guest-b-blkfront-xvda
 guest-a-overlay-read-base guest-b-overlay-read-base guest-a-overlay-write guest-b-overlay-write
 overlay-guests-ready guest-a-overlay-own-kept guest-b-overlay-own-kept guest-a-overlay-peer-isolated
 guest-b-overlay-peer-isolated overlay-guests-poweroff overlay-base-unchanged overlay-check overlay-contents"
# want GROUP: the group of checks runs; e2e_groups=GROUP+GROUP... (tools/e2e/run --groups) names
# the only ones to run, of raw ext4 restart crash save destroy overlay lvm iscsi missing (all when
# absent; restart reads the files the ext4 group wrote).
want() { [ -z "$groups" ] || case "+$groups+" in *"+$1+"*) true ;; *) false ;; esac; }
steps() { want "$1" && echo "$2"; }
case "$scenario" in
    baseline) say "PLAN $(echo dom0-modules dom0-toolstack blkback-load disk-images $(steps raw "$raw_steps") $(steps ext4 "$ext4_steps") $(steps destroy "$destroy_steps") no-stale-backend-nodes)" ;;
    xendisk)  say "PLAN $(echo dom0-modules dom0-toolstack blkback-absent xendisk-start disk-images $(steps raw "$raw_steps") $(steps ext4 "$ext4_steps") $(steps restart "$restart_steps") $(steps crash "$crash_steps") $(steps save "$save_steps") $(steps destroy "$destroy_steps") $(steps overlay "$overlay_steps") $(steps lvm "$lvm_steps") $(steps iscsi "$iscsi_steps") $(steps missing missing-image-refused) no-stale-backend-nodes xendisk-still-running)" ;;
esac
info "scenario $scenario, dom0 kernel $(uname -r)"

start_toolstack

# --- the backend ----------------------------------------------------------------------------------
if [ "$scenario" = baseline ]; then
    if modprobe xen-blkback; then pass blkback-load; else fail blkback-load "modprobe xen-blkback failed"; finish; fi
else
    # The kernel's blkback claims every vbd device as soon as it is loaded: it must stay out.
    if grep -q '^xen_blkback ' /proc/modules || [ -d /sys/bus/xen-backend/drivers/vbd ]; then
        fail blkback-absent "the kernel's xen-blkback is loaded; it would take the devices XenDisk serves"; finish
    fi
    pass blkback-absent
    start_xendisk xendisk-start || finish
fi

# --- disk images ----------------------------------------------------------------------------------
# In XenDisk's default allowed image directory (Storage:AllowedImageDirectories), for both scenarios.
mkdir -p $images
# Small on purpose: under TCG on a busy host a guest reads well under 1 MB/s through the whole stack.
disk_size=$((16 * 1024 * 1024))
dd if=/dev/urandom of=$images/disk.img bs=1M count=16 status=none
dd if=/dev/urandom of=$images/disk2.img bs=1M count=4 status=none
md5=$(md5sum <$images/disk.img | cut -d' ' -f1)
md5b=$(md5sum <$images/disk2.img | cut -d' ' -f1)
if [ "$scenario" = baseline ]; then
    losetup /dev/loop0 $images/disk.img && losetup /dev/loop1 $images/disk2.img || { fail disk-images "losetup failed"; finish; }
    # e2e-phy is a lean stand-in for Xen's `block` script (see /etc/xen/scripts/e2e-phy).
    disk_xvda="vdev=xvda,access=rw,script=e2e-phy,target=/dev/loop0"
    disk_xvdb="vdev=xvdb,access=rw,script=e2e-phy,target=/dev/loop1"
else
    # target= comes last: libxl hands everything after it, commas included, to XenDisk as `params`.
    disk_xvda="vdev=xvda,access=rw,script=xendisk,target=raw:$images/disk.img"
    disk_xvdb="vdev=xvdb,access=rw,script=xendisk,target=raw:$images/disk2.img"
fi
# The guest image with fio is the small image followed by a second archive (the kernel unpacks both).
cat /guest/domU.cpio /guest/fio.cpio >/guest/domU-fio.cpio && rm /guest/fio.cpio
pass disk-images

# --- the guests -----------------------------------------------------------------------------------
guest=e2e
# main_config TASK RAMDISK VCPUS [ARGS]: the guest named e2e with xvda, and the numbers it checks against.
main_config() {
    write_config $guest "$1" "$2" 512 "$3" "'$disk_xvda'" "e2e_md5=$md5 e2e_size=$disk_size e2e_md5b=$md5b ${4:-}"
}

# 1. Block-level checks, fio, and the hot-plug of a second disk.
if want raw; then
    main_config raw /guest/domU-fio.cpio 1
    if create_guest $guest raw-guest-create; then
        if follow_guest $guest "GUEST: WAIT attach-xvdb" 900; then
            final_md5=$(guest_data $guest final-md5)
            pattern_md5=$(guest_data $guest pattern-md5)
            file_md5=$(md5sum <$images/disk.img | cut -d' ' -f1)
            region_md5=$(dd if=$images/disk.img bs=1M skip=2 count=4 status=none | md5sum | cut -d' ' -f1)
            if [ -n "$final_md5" ] && [ "$file_md5" = "$final_md5" ] && [ "$region_md5" = "$pattern_md5" ]; then
                pass dom0-sees-guest-writes
            else
                fail dom0-sees-guest-writes "image md5 $file_md5 (guest: $final_md5), 4 MiB at 2 MiB $region_md5 (guest wrote $pattern_md5)"
            fi
            if xl block-attach $guest "$disk_xvdb" >/tmp/xl-attach.log 2>&1; then
                pass block-attach
            else
                show /tmp/xl-attach.log
                fail block-attach "xl block-attach failed"
            fi
            if follow_guest $guest "GUEST: WAIT detach-xvdb" 600; then
                pattern2_md5=$(guest_data $guest pattern2-md5)
                got=$(dd if=$images/disk2.img bs=1M skip=1 count=2 status=none | md5sum | cut -d' ' -f1)
                if [ "$got" = "$pattern2_md5" ]; then
                    pass dom0-sees-attach-write
                else
                    fail dom0-sees-attach-write "disk2 at 1 MiB has md5 $got, guest wrote $pattern2_md5"
                fi
                if xl block-detach $guest xvdb >/tmp/xl-detach.log 2>&1; then
                    pass block-detach
                else
                    show /tmp/xl-detach.log
                    fail block-detach "xl block-detach failed"
                fi
                # xvdb is device 51728 (202 << 8 | 16); its backend directory goes once the detach completes.
                n=0
                while backend_devices | grep -q '/51728$'; do n=$((n + 1)); [ $n -gt 30 ] && break; sleep 1; done
                if backend_devices | grep -q '/51728$'; then
                    fail detach-nodes-removed "backend/vbd/*/51728 still present 30 s after block-detach"
                else
                    pass detach-nodes-removed
                fi
            fi
        fi
        if follow_guest $guest "GUEST: DONE" 600; then
            wait_guest_gone $guest raw-guest-poweroff
        else
            fail raw-guest-poweroff "no final line from the guest in 600 s"
            xl destroy $guest 2>/dev/null
        fi
    fi
    skip_rest "$raw_steps" "not reached: an earlier step of this guest failed"
fi

# 2. ext4 across a reboot: xl's daemon restarts the domain, so the backend sees the frontend close
#    and a new frontend connect to a new device. After the reboot the guest also checks the features
#    it negotiated (two vCPUs, so that blkfront asks for two queues) and trims the file system.
if want ext4; then
    main_config ext4 /guest/domU.cpio 2 e2e_after=reboot
    if create_guest $guest ext4-guest-create; then
        if follow_guest $guest "GUEST: REBOOT" 600; then
            pass guest-reboot
        else
            fail guest-reboot "the guest did not reach its reboot in 600 s"
        fi
        if follow_guest $guest "GUEST: DONE" 600; then
            wait_guest_gone $guest ext4-guest-poweroff
        else
            fail ext4-guest-poweroff "no final line from the guest in 600 s"
            xl destroy $guest 2>/dev/null
        fi
    fi
    skip_rest "$ext4_steps" "not reached: an earlier step of this guest failed"
fi

# 3. (xendisk) The service restarts while no guest runs (SIGTERM, then a new process): the files
#    written before it read back intact through the new one.
if [ "$scenario" = xendisk ] && want restart; then
    stop_xendisk xendisk-stop
    if ! alive "$xendisk_pid" && start_xendisk xendisk-restart; then
        main_config ext4 /guest/domU.cpio 1 e2e_after=restart
        if create_guest $guest restart-guest-create; then
            if follow_guest $guest "GUEST: DONE" 600; then
                wait_guest_gone $guest restart-guest-poweroff
            else
                fail restart-guest-poweroff "no final line from the guest in 600 s"
                xl destroy $guest 2>/dev/null
            fi
        fi
    fi
    skip_rest "$restart_steps" "not reached: the service did not restart, or the guest failed earlier"
fi

# 3b. (xendisk) The service is killed (SIGKILL, as an abort or the OOM killer would) five times
#    while a two-queue guest runs verified I/O, and started again each time; then it is stopped
#    (SIGTERM) and started once more. Each ring's in-flight record lets the new instance redo exactly
#    what its predecessor left unanswered: the guest must see pauses only, every verified pass intact
#    and no blkfront error. The guest records each pause in its completed I/O (io-gaps); each restart's
#    longest pause, as the guest saw it, must end at most 10 s after the service was back.
# restart_under_io LABEL KIND: SIGKILL (kill) or SIGTERM (term) and a new instance; appends
# "LABEL KIND DOWN_CS READY_CS" to /tmp/restarts (wall clock, hundredths, see now_cs).
restart_under_io() {
    t_down=$(now_cs)
    if [ "$2" = kill ]; then
        kill -KILL "$xendisk_pid" 2>/dev/null
        wait "$xendisk_pid" 2>/dev/null
        echo "--- $1: SIGKILL (dom0 uptime $(cut -d. -f1 /proc/uptime)s)" >>/var/log/xendisk.log
        # A killed process leaves its socket file; the readiness check must see the new one.
        rm -f /run/xendisk/control.sock
        start_xendisk "$1" || return 1
    else
        stop_xendisk "$1-stop" || return 1
        start_xendisk "$1-start" || return 1
    fi
    echo "$1 $2 $t_down $(now_cs)" >>/tmp/restarts
}
# io_stalls STEP GUEST TARGET_S: lays each line of /tmp/restarts beside the guest's io-gaps: a
# restart's stall is the longest gap that overlaps its down time (2 s of slack for the two clocks'
# anchoring); fails when one exceeds the down time by more than TARGET_S seconds.
io_stalls() {
    gaps=$(guest_data "$2" io-gaps)
    result=$(awk -v gaps="$gaps" -v target="$3" '
        BEGIN { n = split(gaps, g, " ") }
        { down = $4 - $3; stall = 0
          for (i = 1; i <= n; i++) { split(g[i], se, ":"); if (se[1] < $4 + 200 && se[2] > $3 - 200 && se[2] - se[1] > stall) stall = se[2] - se[1] }
          shown = stall ? sprintf("%.2f s", stall / 100) : "under 1 s"
          printf "INFO %s (%s): down %.2f s, longest guest I/O gap %s\n", $1, $2 == "kill" ? "SIGKILL" : "SIGTERM", down / 100, shown
          if (stall > down + target * 100) { bad = bad sprintf(" %s: gap %.2f s, down %.2f s;", $1, stall / 100, down / 100) }
          if (stall - down > worst) worst = stall - down }
        END { printf "WORST %.2f\n", worst / 100; if (bad != "") printf "BAD%s\n", bad }' /tmp/restarts)
    echo "$result" | sed -n 's/^INFO //p' | while IFS= read -r line; do info "$line"; done
    worst=$(echo "$result" | sed -n 's/^WORST //p')
    bad=$(echo "$result" | sed -n 's/^BAD //p')
    if [ ! -s /tmp/restarts ]; then
        fail "$1" "no restart was recorded"
    elif [ -n "$bad" ]; then
        fail "$1" "a guest I/O gap exceeded the down time by more than $3 s:$bad"
    else
        pass "$1"
        info "$1: the longest gap exceeded the down time by at most ${worst} s (target $3 s)"
    fi
}
if [ "$scenario" = xendisk ] && want crash && alive "$xendisk_pid"; then
    main_config crash /guest/domU-fio.cpio 2
    : >/tmp/restarts
    if create_guest $guest crash-guest-create; then
        if follow_guest $guest "GUEST: WAIT kills" 600; then
            ok=yes
            for k in 1 2 3 4 5; do
                sleep 8
                restart_under_io "crash-kill-$k" kill || { ok=no; break; }
            done
            if [ $ok = yes ]; then
                sleep 8
                restart_under_io restart-under-io term
            fi
            sleep 5
            # What the restarted instances found in the rings' in-flight records (event 2008).
            grep 'resumed after an unclean stop' /var/log/xendisk.log | sed 's/.*Ring /ring /' | while read -r line; do info "$line"; done
            xenstore-write "/local/domain/$(xl domid $guest)/data/e2e-go" 1
        fi
        if follow_guest $guest "GUEST: DONE" 900; then
            wait_guest_gone $guest crash-guest-poweroff
            io_stalls restart-io-stalls $guest 10
        else
            fail crash-guest-poweroff "no final line from the guest in 900 s"
            xl destroy $guest 2>/dev/null
        fi
    fi
    skip_rest "$crash_steps" "not reached: the service was not running, or the guest failed earlier"
fi

# 3c. (xendisk) Save and restore of a two-queue guest running verified I/O: the saved domain's
#    device goes, and blkfront reconnects to a new backend device of the restored domain.
#    libxl-save-helper, in dom0's image, writes and reads the domain's memory (xl save writes it to
#    dom0's disk, /dev/sda). Afterwards dom0 finds the guest's last view of its disk in the image.
#    `xl migrate` is not run: Debian's Xen 4.17 is built without shadow paging
#    (CONFIG_SHADOW_PAGING), which live migration of a PV guest needs for log-dirty mode (the sender
#    stops at "Failed to enable logdirty"); XenDisk's part of a migration to the same host, the
#    incoming domain's device sharing the outgoing one's open disk, is covered by
#    tests/XenDisk.Backend.Tests (SharedDiskTests).
if [ "$scenario" = xendisk ] && want save && alive "$xendisk_pid"; then
    # 512 MiB as the crash guest: the initramfs with fio's layer (about 90 MiB) unpacks into the
    # guest's RAM file system, and with less memory its later files (fio's libraries) are cut off.
    write_config $guest crash /guest/domU-fio.cpio 512 2 "'$disk_xvda'" "e2e_label=save"
    if create_guest $guest save-guest-create && follow_guest $guest "GUEST: WAIT kills" 600; then
        sleep 10
        # The saved memory goes to dom0's disk (its RAM file system has no room for it); the LVM
        # checks later make their volume group over it.
        dom0_disk >/tmp/dom0-disk.log 2>&1 || info "$(cat /tmp/dom0-disk.log)"
        t0=$(now_cs)
        if timeout 600 xl save $guest /dev/sda >/tmp/xl-save.log 2>&1 && ! guest_running $guest; then
            info "xl save: $(cs_text $(($(now_cs) - t0))) s ($(grep -c 'Frames:' /tmp/xl-save.log) progress lines)"
            pass xl-save
            t0=$(now_cs)
            if timeout 600 xl restore /dev/sda >/tmp/xl-restore.log 2>&1 && guest_running $guest; then
                info "xl restore: $(cs_text $(($(now_cs) - t0))) s, now domain $(xl domid $guest)"
                pass xl-restore
            else
                show /tmp/xl-restore.log 30
                fail xl-restore "xl restore failed"
            fi
        else
            show /tmp/xl-save.log 30
            fail xl-save "xl save failed"
        fi
        dd if=/dev/zero of=/dev/sda bs=1M count=1 status=none
        if guest_running $guest; then
            sleep 10
            xenstore-write "/local/domain/$(xl domid $guest)/data/e2e-go" 1
        fi
    fi
    if guest_running $guest; then
        if follow_guest $guest "GUEST: DONE" 900; then
            wait_guest_gone $guest save-guest-poweroff
            final_md5=$(guest_data $guest final-md5)
            file_md5=$(md5sum <$images/disk.img | cut -d' ' -f1)
            if [ -n "$final_md5" ] && [ "$file_md5" = "$final_md5" ]; then
                pass dom0-sees-restored-writes
            else
                fail dom0-sees-restored-writes "image md5 $file_md5, the guest read ${final_md5:-nothing} last"
            fi
            info "guest I/O gaps over 1 s across save and restore: $(guest_data $guest io-gaps | awk '{ for (i = 1; i <= NF; i++) { split($i, se, ":"); printf "%.2f s; ", (se[2] - se[1]) / 100 } }')"
        else
            fail save-guest-poweroff "no final line from the guest in 900 s"
            xl destroy $guest 2>/dev/null
        fi
    fi
    skip_rest "$save_steps" "not reached: the service was not running, or an earlier step failed"
fi

# 4. A guest destroyed while it runs: the frontend never closes, the backend must still let go.
if want destroy; then
    main_config idle /guest/domU.cpio 1
    if create_guest $guest idle-guest-create; then
        if follow_guest $guest "GUEST: WAIT destroy" 600 && xl destroy $guest >/tmp/xl-destroy.log 2>&1 && ! guest_running $guest; then
            pass destroy-running-guest
        else
            show /tmp/xl-destroy.log
            fail destroy-running-guest "the guest did not come up, or xl destroy failed"
            xl destroy $guest 2>/dev/null
        fi
    fi
    skip_rest "$destroy_steps" "not reached: the guest was not created"
fi

# Two guests on overlays of one base at once, each writing its own region and checking that it
# sees the base in the other's: $1 names the steps ($1-guests-create, -ready, -poweroff), $2 and $3
# are the guests, $4 and $5 their disk targets over the base $golden; golden_md5 is left set for the
# caller's check that the base never changed. e2e_own and e2e_peer are offsets in MiB; e2e_peer_md5
# is the base's md5 at the peer's offset.
overlay_pair() {
    local steps=$1 a=$2 b=$3 g n gone create_a create_b rc_a rc_b base_at_2m base_at_8m
    golden_md5=$(md5sum <$golden | cut -d' ' -f1)
    base_at_2m=$(dd if=$golden bs=1M skip=2 count=2 status=none | md5sum | cut -d' ' -f1)
    base_at_8m=$(dd if=$golden bs=1M skip=8 count=2 status=none | md5sum | cut -d' ' -f1)
    write_config $a overlay /guest/domU.cpio 256 1 "'vdev=xvda,access=rw,script=xendisk,target=$4'" \
        "e2e_md5=$golden_md5 e2e_own=2 e2e_peer=8 e2e_peer_md5=$base_at_8m"
    write_config $b overlay /guest/domU.cpio 256 1 "'vdev=xvda,access=rw,script=xendisk,target=$5'" \
        "e2e_md5=$golden_md5 e2e_own=8 e2e_peer=2 e2e_peer_md5=$base_at_2m"
    # Both at once: two xl processes create the domains and attach their disks concurrently.
    for g in $a $b; do forget_console $g; done
    xl create /etc/xen/$a.cfg >/tmp/xl-create-$a.log 2>&1 &
    create_a=$!
    xl create /etc/xen/$b.cfg >/tmp/xl-create-$b.log 2>&1 &
    create_b=$!
    wait $create_a; rc_a=$?
    wait $create_b; rc_b=$?
    if [ $rc_a -eq 0 ] && [ $rc_b -eq 0 ]; then
        pass $steps-guests-create
    else
        show /tmp/xl-create-$a.log 20
        show /tmp/xl-create-$b.log 20
        fail $steps-guests-create "xl create failed ($a: status $rc_a, $b: status $rc_b)"
    fi

    if [ $rc_a -eq 0 ] && [ $rc_b -eq 0 ] && follow_guests "$a $b" "GUEST: WAIT peer" 600; then
        pass $steps-guests-ready
        # The go-ahead lands in each guest's own data/ directory, which the guest may read.
        for g in $a $b; do xenstore-write "/local/domain/$(xl domid $g)/data/e2e-go" 1; done
        if follow_guests "$a $b" "GUEST: DONE" 600; then
            gone=yes
            for g in $a $b; do
                n=0
                while guest_running $g; do n=$((n + 1)); [ $n -gt 120 ] && break; sleep 1; done
                guest_running $g && gone=no
            done
            if [ $gone = yes ]; then pass $steps-guests-poweroff; else fail $steps-guests-poweroff "a guest still exists 120 s after its last line"; fi
        else
            fail $steps-guests-poweroff "no final line from both guests in 600 s"
        fi
    else
        [ $rc_a -eq 0 ] && [ $rc_b -eq 0 ] && fail $steps-guests-ready "both guests did not write their pattern within 600 s"
    fi
    for g in $a $b; do guest_running $g && xl destroy $g 2>/dev/null; done
}

# 5. (xendisk) Two guests at once, each on its own qcow2 overlay of one raw base: guest A's disk is
#    `qcow2:` (the backing file comes from the overlay's header), guest B's is `cow:BASE,OVERLAY`.
#    Each writes 2 MiB of its own at its own offset (A at 2 MiB, B at 8 MiB), waits until both have
#    written, then must find its own bytes and, at the other's offset, the base's. The base never
#    changes; QEMU's qemu-img checks both overlays and reads back what each guest saw.
overlay_guests="e2e-a e2e-b"
run_overlay_guests() {
    golden=$images/golden.img
    dd if=/dev/urandom of=$golden bs=1M count=16 status=none
    rm -f $images/overlay-a.qcow2 $images/overlay-b.qcow2
    # Both at once: dom0 has two vCPUs, and each command spends most of its time starting .NET.
    xendisk image create -f qcow2 -b $golden -F raw $images/overlay-a.qcow2 >/tmp/image-create-a.log 2>&1 &
    create_a=$!
    xendisk image create -f qcow2 -b $golden -F raw $images/overlay-b.qcow2 >/tmp/image-create-b.log 2>&1 &
    create_b=$!
    wait $create_a; rc_a=$?
    wait $create_b; rc_b=$?
    for g in a b; do info "$(head -n 1 /tmp/image-create-$g.log)"; done
    if [ $rc_a -ne 0 ] || [ $rc_b -ne 0 ]; then
        show /tmp/image-create-a.log
        show /tmp/image-create-b.log
        fail overlay-images "xendisk image create failed (overlay-a: status $rc_a, overlay-b: status $rc_b)"
        return
    fi
    pass overlay-images

    overlay_pair overlay e2e-a e2e-b "qcow2:$images/overlay-a.qcow2" "cow:$golden,$images/overlay-b.qcow2"

    now_md5=$(md5sum <$golden | cut -d' ' -f1)
    if [ "$now_md5" = "$golden_md5" ]; then pass overlay-base-unchanged; else fail overlay-base-unchanged "base md5 $now_md5, was $golden_md5"; fi

    # QEMU is the reference reader of qcow2; without it, XenDisk's own checker.
    if command -v qemu-img >/dev/null; then checker="qemu-img check -f qcow2"; else checker="xendisk image check -f qcow2"; fi
    bad=
    for g in a b; do
        if $checker $images/overlay-$g.qcow2 >/tmp/check-$g.log 2>&1; then
            info "overlay-$g.qcow2: $checker: $(tr '\n' ' ' </tmp/check-$g.log)"
        else
            show /tmp/check-$g.log 20
            bad="$bad overlay-$g.qcow2"
        fi
    done
    if [ -z "$bad" ]; then pass overlay-check; else fail overlay-check "$checker failed for$bad"; fi

    if ! command -v qemu-img >/dev/null; then skip overlay-contents "qemu-img is not in dom0's image"; return; fi
    bad=
    for g in a b; do
        # What QEMU reads through the overlay and its base must be what the guest read last.
        qemu-img convert -f qcow2 -O raw $images/overlay-$g.qcow2 /tmp/overlay-$g.raw >/tmp/convert-$g.log 2>&1 || { show /tmp/convert-$g.log; bad="$bad $g: qemu-img convert failed;"; continue; }
        whole=$(md5sum </tmp/overlay-$g.raw | cut -d' ' -f1)
        own=$(guest_data e2e-$g own-offset)
        region=$(dd if=/tmp/overlay-$g.raw bs=1M skip="${own:-0}" count=2 status=none | md5sum | cut -d' ' -f1)
        rm -f /tmp/overlay-$g.raw
        [ "$whole" = "$(guest_data e2e-$g final-md5)" ] || bad="$bad $g: disk md5 $whole, guest read $(guest_data e2e-$g final-md5);"
        [ "$region" = "$(guest_data e2e-$g own-md5)" ] || bad="$bad $g: its 2 MiB at ${own} MiB have md5 $region, guest wrote $(guest_data e2e-$g own-md5);"
    done
    if [ -z "$bad" ]; then pass overlay-contents; else fail overlay-contents "$bad"; fi
}
if [ "$scenario" = xendisk ] && want overlay; then
    run_overlay_guests
    skip_rest "$overlay_steps" "not reached: an earlier overlay step failed"
fi

# 5b. (xendisk) LVM: a volume group on the disk QEMU gives dom0 (/dev/sda, see boot in
#    tools/e2e/lib/harness.sh), a golden LV of random bytes and one LV per guest holding its bitmap
#    overlay (`cow:/dev/e2e/golden,/dev/e2e/vmN,format=bitmap`: the provider formats a blank block
#    device as a bitmap overlay). The two guests run the overlay checks of step 5; the golden LV
#    never changes, and `xendisk image convert` of each overlay LV (through the golden LV) gives what
#    its guest read last.
lvm_guests="e2e-la e2e-lb"
# lvm_setup: dom0 has no udev: LVM creates its device nodes itself and waits for no udev event.
lvm_setup() {
    dom0_disk && modprobe dm-mod || return 1
    mkdir -p /etc/lvm
    cat >/etc/lvm/lvm.conf <<'LVM'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" use_devicesfile = 0 }
global { use_lvmpolld = 0 event_activation = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
LVM
    pvcreate -q -y /dev/sda && vgcreate -q e2e /dev/sda &&
        lvcreate -q -y -L 16M -n golden e2e && lvcreate -q -y -L 20M -n vm1 e2e && lvcreate -q -y -L 20M -n vm2 e2e || return 1
    dd if=/dev/urandom of=/dev/e2e/golden bs=1M count=16 oflag=direct status=none || { echo "cannot write the golden LV"; return 1; }
    # Each overlay LV starts blank, so that the provider formats it.
    dd if=/dev/zero of=/dev/e2e/vm1 bs=1M count=1 oflag=direct status=none && dd if=/dev/zero of=/dev/e2e/vm2 bs=1M count=1 oflag=direct status=none
}
run_lvm_guests() {
    if ! lvm_setup >/tmp/lvm-setup.log 2>&1; then
        show /tmp/lvm-setup.log 30
        fail lvm-volume-group "$(tail -n 1 /tmp/lvm-setup.log)"
        return 1
    fi
    info "$(lvs --noheadings -o lv_name,lv_size,devices e2e 2>&1 | tr -s ' ' | tr '\n' ';')"
    pass lvm-volume-group
    golden=/dev/e2e/golden
    overlay_pair lvm e2e-la e2e-lb "cow:$golden,/dev/e2e/vm1,format=bitmap" "cow:$golden,/dev/e2e/vm2,format=bitmap"

    now_md5=$(md5sum <$golden | cut -d' ' -f1)
    if [ "$now_md5" = "$golden_md5" ]; then pass lvm-golden-unchanged; else fail lvm-golden-unchanged "golden LV md5 $now_md5, was $golden_md5"; fi
    bad=
    for n in 1 2; do
        g=$(echo "$lvm_guests" | cut -d' ' -f$n)
        rm -f /tmp/lvm-vm$n.raw
        if ! xendisk image convert -f bitmap -O raw --allow-base /dev /dev/e2e/vm$n /tmp/lvm-vm$n.raw >/tmp/lvm-convert.log 2>&1; then
            show /tmp/lvm-convert.log 10
            bad="$bad vm$n: xendisk image convert failed;"
            continue
        fi
        whole=$(md5sum </tmp/lvm-vm$n.raw | cut -d' ' -f1)
        rm -f /tmp/lvm-vm$n.raw
        [ "$whole" = "$(guest_data $g final-md5)" ] || bad="$bad vm$n: overlay reads $whole, guest read $(guest_data $g final-md5);"
    done
    if [ -z "$bad" ]; then pass lvm-overlay-contents; else fail lvm-overlay-contents "$bad"; fi
}
# The online resize (blkback's xen_vbd_resize): an LV served raw grows under its running guest
# through lvextend alone; XenDisk's periodic size check (Backend:SizeCheckSeconds) tells blkfront,
# the guest sees the new size and writes past the old end, and dom0 finds those bytes on the LV.
run_lvm_resize() {
    if ! lvcreate -q -y -L 8M -n grow e2e >/tmp/lvm-resize.log 2>&1; then
        show /tmp/lvm-resize.log 10
        fail lvm-resize-guest-create "lvcreate of the 8 MiB LV failed"
        return
    fi
    write_config e2e-lr resize /guest/domU.cpio 256 1 "'vdev=xvda,access=rw,script=xendisk,target=raw:/dev/e2e/grow'" "e2e_size=8388608"
    create_guest e2e-lr lvm-resize-guest-create || return
    if follow_guest e2e-lr "GUEST: WAIT resize" 600; then
        if lvextend -q -L 16M e2e/grow >/tmp/lvm-resize.log 2>&1; then
            pass lvm-resize-lvextend
        else
            show /tmp/lvm-resize.log 10
            fail lvm-resize-lvextend "lvextend to 16 MiB failed"
        fi
    fi
    if follow_guest e2e-lr "GUEST: DONE" 600; then
        wait_guest_gone e2e-lr lvm-resize-poweroff
        tail_md5=$(dd if=/dev/e2e/grow bs=1M skip=8 count=1 iflag=direct status=none | md5sum | cut -d' ' -f1)
        if [ -n "$tail_md5" ] && [ "$tail_md5" = "$(guest_data e2e-lr tail-md5)" ]; then
            pass lvm-resize-tail-on-lv
        else
            fail lvm-resize-tail-on-lv "the LV's 1 MiB at 8 MiB reads $tail_md5, the guest wrote $(guest_data e2e-lr tail-md5)"
        fi
    else
        fail lvm-resize-poweroff "no final line from the guest in 600 s"
        xl destroy e2e-lr 2>/dev/null
    fi
}
if [ "$scenario" = xendisk ] && want lvm; then
    run_lvm_guests && run_lvm_resize
    skip_rest "$lvm_steps" "not reached: an earlier LVM step failed"
fi

# 5c. (xendisk) A LUN attached through dom0's kernel initiator: tgtd in dom0 exports a file of
#    random bytes on 127.0.0.1, open-iscsi's iscsid and iscsiadm log in, and the SCSI disk the
#    kernel makes of it is served as `raw:/dev/sdX` to a guest that runs the raw block checks and
#    fio. Afterwards the LUN, read through the initiator, and the file behind it on tgtd's side
#    hold what the guest read last.
iscsi_iqn=iqn.2026-12.org.xendisk.e2e:lun
# iscsi_setup: tgtd and the initiator; prints the SCSI disk's name (sdX) last.
iscsi_setup() {
    # iscsi_tcp asks the crypto API for crc32c by name when it makes a connection (ENOMEM without it).
    # sd_mod makes the SCSI disk of the LUN a block device.
    modprobe crc32c_generic && modprobe iscsi_tcp && modprobe sd_mod || return 1
    dd if=/dev/urandom of=$images/lun.img bs=1M count=16 status=none || return 1
    mkdir -p /run/tgtd /etc/iscsi /run/lock/iscsi
    tgtd -f --iscsi portal=127.0.0.1:3260 >/tmp/tgtd.log 2>&1 &
    n=0
    until tgtadm --lld iscsi --op show --mode sys >/dev/null 2>&1; do
        n=$((n + 1)); [ $n -gt 60 ] && { cat /tmp/tgtd.log; echo "tgtd did not answer in 30 s"; return 1; }; sleep 0.5
    done
    tgtadm --lld iscsi --op new --mode target --tid 1 -T $iscsi_iqn &&
        tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b $images/lun.img &&
        tgtadm --lld iscsi --op bind --mode target --tid 1 -I ALL || { echo "tgtadm could not define the target"; return 1; }
    echo "InitiatorName=iqn.2026-12.org.xendisk.e2e:dom0" >/etc/iscsi/initiatorname.iscsi
    # iscsid looks up the user behind iscsiadm's socket (getpwuid) and refuses an unknown one.
    grep -q '^root:' /etc/passwd 2>/dev/null || echo "root:x:0:0:root:/root:/bin/sh" >>/etc/passwd
    : >/etc/iscsi/iscsid.conf
    iscsid -f >/tmp/iscsid.log 2>&1 &
    n=0
    until iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260 >/tmp/iscsi-discovery.log 2>&1; do
        n=$((n + 1)); [ $n -gt 20 ] && { cat /tmp/iscsi-discovery.log /tmp/iscsid.log; echo "iscsiadm discovery failed for 10 s"; return 1; }; sleep 0.5
    done
    iscsiadm -m node -T $iscsi_iqn -p 127.0.0.1:3260 --login || { cat /tmp/iscsid.log; echo "iscsiadm --login failed"; return 1; }
    # LUN 1 of the session's target is the disk (LUN 0 is tgt's controller); devtmpfs makes its node.
    n=0
    while :; do
        disk=$(ls -d /sys/class/iscsi_session/session*/device/target*/*:*:*:1/block/* 2>/dev/null | head -n 1)
        [ -n "$disk" ] && [ -b "/dev/${disk##*/}" ] && break
        n=$((n + 1)); [ $n -gt 120 ] && { echo "no block device for LUN 1 60 s after the login"; return 1; }; sleep 0.5
    done
    echo "${disk##*/}"
}
run_iscsi_lun() {
    if ! iscsi_setup >/tmp/iscsi-setup.log 2>&1; then
        show /tmp/iscsi-setup.log 30
        fail iscsi-target "$(tail -n 1 /tmp/iscsi-setup.log)"
        return 1
    fi
    pass iscsi-target
    lun=/dev/$(tail -n 1 /tmp/iscsi-setup.log)
    lun_md5=$(md5sum <$images/lun.img | cut -d' ' -f1)
    through=$(dd if=$lun bs=1M iflag=direct status=none | md5sum | cut -d' ' -f1)
    if [ "$through" = "$lun_md5" ]; then
        pass iscsi-login
        info "LUN 1 is $lun ($(cat /sys/class/block/${lun#/dev/}/size) sectors)"
    else
        fail iscsi-login "$lun reads md5 $through, the file behind it has $lun_md5"
        return 1
    fi
    # 512 MiB, as for the first guest: with less, the kernel cannot unpack fio's layer of the RAM disk.
    write_config e2e-ki lun /guest/domU-fio.cpio 512 1 "'vdev=xvda,access=rw,script=xendisk,target=raw:$lun'" \
        "e2e_md5=$lun_md5 e2e_size=$((16 * 1024 * 1024))"
    create_guest e2e-ki iscsi-guest-create || return 1
    if follow_guest e2e-ki "GUEST: DONE" 900; then
        wait_guest_gone e2e-ki iscsi-guest-poweroff
    else
        fail iscsi-guest-poweroff "no final line from the guest in 900 s"
        xl destroy e2e-ki 2>/dev/null
    fi
    final=$(guest_data e2e-ki final-md5)
    through=$(dd if=$lun bs=1M iflag=direct status=none | md5sum | cut -d' ' -f1)
    if iscsiadm -m node -T $iscsi_iqn -p 127.0.0.1:3260 --logout >/tmp/iscsi-logout.log 2>&1; then
        pass iscsi-logout
    else
        show /tmp/iscsi-logout.log 10
        fail iscsi-logout "iscsiadm --logout failed"
    fi
    behind=$(md5sum <$images/lun.img | cut -d' ' -f1)
    if [ -n "$final" ] && [ "$through" = "$final" ] && [ "$behind" = "$final" ]; then
        pass iscsi-lun-contents
    else
        fail iscsi-lun-contents "the guest read $final last; the LUN reads $through through the initiator, the file behind it $behind"
    fi
    rm -f $images/lun.img
}
if [ "$scenario" = xendisk ] && want iscsi; then
    run_iscsi_lun
    skip_rest "$iscsi_steps" "not reached: an earlier iSCSI step failed"
fi

# 6. (xendisk) A disk XenDisk cannot open: xl create must fail with XenDisk's reason, passed on by
#    the hotplug script (docs/E2E.md, "Hotplug contract"), and leave no device behind.
if [ "$scenario" = xendisk ] && want missing; then
    disk_xvda="vdev=xvda,access=rw,script=xendisk,target=raw:$images/does-not-exist.img"
    main_config idle /guest/domU.cpio 1
    xl create /etc/xen/$guest.cfg >/tmp/xl-create.log 2>&1
    if guest_running $guest; then
        xl destroy $guest 2>/dev/null
        fail missing-image-refused "xl create succeeded with a missing image"
    elif grep -q 'script: xendisk:' /tmp/xl-create.log; then
        pass missing-image-refused
        info "xl said: $(grep 'script: xendisk:' /tmp/xl-create.log | head -n 1)"
    else
        show /tmp/xl-create.log 20
        fail missing-image-refused "xl create failed without XenDisk's reason (no 'script: xendisk:' line)"
    fi
fi

no_stale_backend_nodes no-stale-backend-nodes

if [ "$scenario" = xendisk ]; then
    if alive "$xendisk_pid"; then
        pass xendisk-still-running
    else
        fail xendisk-still-running "xendisk serve exited during the run"
    fi
    kill "$xendisk_pid" 2>/dev/null
fi
