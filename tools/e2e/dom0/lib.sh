# Shared by dom0's scenarios (busybox sh; /init sources it from /usr/lib/e2e/lib.sh): the markers
# the host parses, the Xen toolstack, XenDisk's service, and guests followed through their consoles.
# Everything the host harness parses goes to the console (hvc0, which Xen copies to the serial port)
# as one line each:
#   E2E: PLAN <step>...   E2E: PASS <step> (<seconds>s)   E2E: FAIL <step>: <reason>
#   E2E: SKIP <step>: <reason>   E2E: INFO <text>   E2E: RESULT <words>   E2E: DONE

images=/var/lib/xendisk/images
t_step=$(cut -d. -f1 /proc/uptime)
failures=0
say() { echo "E2E: $*"; }
pass() { now=$(cut -d. -f1 /proc/uptime); say "PASS $1 ($((now - t_step))s)"; t_step=$now; echo "$1" >>/tmp/verdicts; }
fail() { say "FAIL $1: $2"; failures=$((failures + 1)); t_step=$(cut -d. -f1 /proc/uptime); echo "$1" >>/tmp/verdicts; }
skip() { say "SKIP $1: $2"; echo "$1" >>/tmp/verdicts; }
# skip_rest "STEP..." REASON: a SKIP for each step of a group that has no verdict yet (the host
# reports steps that never got one as failed; these were not reached because of an earlier failure).
skip_rest() { for step in $1; do grep -qx -- "$step" /tmp/verdicts 2>/dev/null || skip "$step" "$2"; done; }
info() { say "INFO $*"; }
# now_cs: the wall clock in hundredths of a second, read without a fork: dom0's uptime (hundredths)
# anchored to the wall clock once. The guests do the same (domU/init), and both clocks come from
# Xen, so dom0's restart times and a guest's I/O gaps can be laid side by side.
clock_offset=$(( $(date +%s) - $(cut -d. -f1 /proc/uptime) ))
now_cs() { read -r up _ </proc/uptime; echo $(( ${up%.*}${up#*.} + clock_offset * 100 )); }
# cs_text CS: hundredths of a second as seconds ("1234" -> "12.34").
cs_text() { printf '%d.%02d' $(($1 / 100)) $(($1 % 100)); }
# show FILE LINES: copies the tail of a log to the console, each line prefixed, for the failure report.
show() { [ -f "$1" ] && tail -n "${2:-30}" "$1" | sed "s#^#E2E-LOG $(basename "$1")| #"; }

finish() {
    info "dom0 uptime $(cut -d. -f1 /proc/uptime)s, $failures failure(s)"
    if [ "$failures" -gt 0 ]; then
        show /var/log/xen/xen-hotplug.log 40
        for f in /var/log/xen/xl-*.log; do show "$f" 40; done
        show /var/log/xendisk.log 80
        dmesg | tail -n 40 | sed 's/^/E2E-LOG dmesg| /'
    fi
    say DONE
    sync
    poweroff -f
}

# --- the toolstack --------------------------------------------------------------------------------
# start_toolstack: steps dom0-modules and dom0-toolstack; stops the run when xl cannot work.
start_toolstack() {
    for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd loop; do
        modprobe "$m" || fail dom0-modules "modprobe $m failed"
    done
    mount -t xenfs xenfs /proc/xen || fail dom0-modules "mount xenfs failed"
    [ "$failures" = 0 ] && pass dom0-modules

    xenstored --pid-file /run/xen/xenstored.pid
    n=0
    until xenstore-read -s / >/dev/null 2>&1; do
        n=$((n + 1)); [ $n -gt 120 ] && { fail dom0-toolstack "xenstored did not answer in 60 s"; finish; }
        sleep 0.5
    done
    xen-init-dom0 >/var/log/xen/xen-init-dom0.log 2>&1 || { show /var/log/xen/xen-init-dom0.log; fail dom0-toolstack "xen-init-dom0 failed"; finish; }
    xenconsoled --pid-file=/run/xen/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
    if xl list >/tmp/xl-list 2>&1; then pass dom0-toolstack; else show /tmp/xl-list; fail dom0-toolstack "xl list failed"; finish; fi
}

# --- XenDisk's service ----------------------------------------------------------------------------
# alive PID: the process exists and has not exited (a child that exited stays a zombie until the
# shell reaps it, and kill -0 still succeeds on a zombie).
alive() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }
# xendisk_settings: the service settings given on the kernel command line as
# e2e_xendisk_setting=SECTION:KEY=VALUE (tools/e2e/compare --setting), one XENDISK_SECTION__KEY=VALUE
# word each, as the service reads its environment.
xendisk_settings() {
    for word in $(cat /proc/cmdline); do
        case "$word" in
            e2e_xendisk_setting=*=*) setting=${word#e2e_xendisk_setting=}; key=${setting%%=*}; echo "XENDISK_$(echo "$key" | sed 's/:/__/g')=${setting#*=}" ;;
        esac
    done
}
# start_xendisk STEP: starts `xendisk serve` in the background (xendisk_pid) and waits for its
# control socket. The service watches backend/vbd and serves the devices whose hotplug script is
# `xendisk`; the socket comes up after the backend has started watching, so it is the readiness
# signal (libxl gives a new device only 10 s to reach InitWait). Returns 1 after a FAIL.
start_xendisk() {
    if [ ! -x /opt/xendisk/xendisk ]; then fail "$1" "/opt/xendisk/xendisk is not in the image"; return 1; fi
    echo "--- $1: xendisk serve starts (dom0 uptime $(cut -d. -f1 /proc/uptime)s)" >>/var/log/xendisk.log
    # Images may lie in the default directory; bases also on LVM volumes, whose device-mapper nodes
    # (/dev/mapper/VG-LV, where /dev/VG/LV leads) the copy-on-write provider must be allowed to read.
    # shellcheck disable=SC2046 # one word per setting
    env XENDISK_Storage__AllowedImageDirectories__0=$images XENDISK_Storage__AllowedImageDirectories__1=/dev/mapper $(xendisk_settings) \
        /opt/xendisk/xendisk serve --hotplug-script xendisk --verbose >>/var/log/xendisk.log 2>&1 &
    xendisk_pid=$!
    n=0
    until [ -S /run/xendisk/control.sock ]; do
        if ! alive "$xendisk_pid"; then
            wait "$xendisk_pid"; rc=$?
            fail "$1" "xendisk serve exited with status $rc before it was ready"; return 1
        fi
        # A fine poll: the restart steps measure the time the service was down by it.
        n=$((n + 1)); [ $n -gt 1200 ] && { fail "$1" "no control socket /run/xendisk/control.sock after 240 s"; return 1; }
        sleep 0.2
    done
    pass "$1"
}
# stop_xendisk STEP: SIGTERM, then at most 60 s for an orderly exit (status 0, control socket
# removed). Returns 1 after a FAIL; the process is gone either way.
stop_xendisk() {
    kill -TERM "$xendisk_pid" 2>/dev/null
    n=0
    while alive "$xendisk_pid" && [ $n -lt 120 ]; do n=$((n + 1)); sleep 0.5; done
    if alive "$xendisk_pid"; then
        kill -KILL "$xendisk_pid" 2>/dev/null
        wait "$xendisk_pid"
        fail "$1" "xendisk serve still ran 60 s after SIGTERM (killed)"
        return 1
    fi
    wait "$xendisk_pid"; rc=$?
    echo "--- $1: xendisk serve exited with status $rc (dom0 uptime $(cut -d. -f1 /proc/uptime)s)" >>/var/log/xendisk.log
    if [ "$rc" -ne 0 ]; then
        fail "$1" "xendisk serve exited with status $rc after SIGTERM"
        return 1
    fi
    if [ -e /run/xendisk/control.sock ]; then
        # A socket left behind would pass the next start's readiness check at once.
        rm -f /run/xendisk/control.sock
        fail "$1" "xendisk serve left its control socket behind"
        return 1
    fi
    pass "$1"
}

# dom0_disk: the disk QEMU gives dom0 (see boot in tools/e2e/lib/harness.sh) as /dev/sda.
dom0_disk() {
    for m in ata_piix sd_mod; do modprobe "$m" || { echo "modprobe $m failed"; return 1; }; done
    n=0
    until [ -b /dev/sda ]; do n=$((n + 1)); [ $n -gt 60 ] && { echo "no /dev/sda 30 s after modprobe ata_piix"; return 1; }; sleep 0.5; done
}

# --- guests ---------------------------------------------------------------------------------------
# A guest is known by its xl name. xenconsoled writes its console to guest-NAME.log; dom0 copies the
# new lines to its own console with a prefix and turns the guest's PASS/FAIL lines into its own
# verdicts: guest-<step> for the guest named e2e, guest-<label>-<step> for e2e-<label>.
guest_log() { echo "/var/log/xen/console/guest-$1.log"; }
guest_prefix() { case "$1" in e2e) echo guest ;; e2e-*) echo "guest-${1#e2e-}" ;; *) echo "guest-$1" ;; esac; }

# write_config NAME TASK RAMDISK MEMORY VCPUS DISKS ARGS: /etc/xen/NAME.cfg for a PV guest running
# the task TASK of domU/init, with DISKS the body of xl's disk list ('...', '...') and ARGS more
# e2e_* words for the guest's command line.
write_config() {
    cat >"/etc/xen/$1.cfg" <<EOF
name = "$1"
type = "pv"
kernel = "/guest/vmlinuz"
ramdisk = "$3"
extra = "console=hvc0 loglevel=4 e2e_task=$2 $7"
memory = $4
vcpus = $5
on_poweroff = "destroy"
on_reboot = "restart"
on_crash = "destroy"
disk = [ $6 ]
EOF
}
# forget_console NAME: each guest starts with an empty console log, so a pattern matches only its own lines.
forget_console() { rm -f "$(guest_log "$1")" "/tmp/console-$1.now"; echo 0 >"/tmp/console-$1.copied"; }
# create_guest NAME STEP: xl create of /etc/xen/NAME.cfg; returns 1 after a FAIL.
create_guest() {
    forget_console "$1"
    if xl create "/etc/xen/$1.cfg" >"/tmp/xl-create-$1.log" 2>&1; then
        pass "$2"
    else
        show "/tmp/xl-create-$1.log" 40
        # A guest with a device model (qdisk disks): QEMU's own words on why it stopped.
        show "/var/log/xen/qemu-dm-$1.log" 40
        fail "$2" "xl create failed"
        return 1
    fi
}
# copy_console NAME: copies the guest's new console lines to ours and turns its verdicts into ours.
copy_console() {
    log=$(guest_log "$1")
    [ -f "$log" ] || return 0
    tr -d '\r' <"$log" >"/tmp/console-$1.now"
    total=$(wc -l <"/tmp/console-$1.now")
    copied=$(cat "/tmp/console-$1.copied" 2>/dev/null || echo 0)
    # A log that was started afresh (a new domain of the same name) is copied from its start.
    [ "$total" -lt "$copied" ] && copied=0
    [ "$total" -gt "$copied" ] || return 0
    echo "$total" >"/tmp/console-$1.copied"
    prefix=$(guest_prefix "$1")
    sed -n "$((copied + 1)),${total}p" "/tmp/console-$1.now" >"/tmp/console-$1.new"
    while IFS= read -r line; do
        case "$line" in
            *"GUEST: PASS "*) pass "$prefix-${line#*GUEST: PASS }" ;;
            *"GUEST: FAIL "*) step=${line#*GUEST: FAIL }; fail "$prefix-${step%%:*}" "${step#*: }" ;;
            *) echo "$prefix| $line" ;;
        esac
    done <"/tmp/console-$1.new"
}
# follow_guests "NAME..." PATTERN SECONDS: copies the guests' consoles to ours until every one of
# them has shown PATTERN (0), or SECONDS pass (1).
follow_guests() {
    waited=0
    while :; do
        all=yes
        for g in $1; do
            copy_console "$g"
            grep -q -- "$2" "/tmp/console-$g.now" 2>/dev/null || all=no
        done
        [ "$all" = yes ] && return 0
        [ "$waited" -ge "$3" ] && return 1
        waited=$((waited + 1))
        sleep 1
    done
}
# follow_guest NAME PATTERN SECONDS: the same for one guest.
follow_guest() { follow_guests "$1" "$2" "$3"; }
# guest_data NAME KEY: the last value the guest printed as "GUEST: DATA KEY=VALUE".
guest_data() { tr -d '\r' <"$(guest_log "$1")" | sed -n "s/.*GUEST: DATA $2=//p" | tail -n 1; }
guest_running() { xl domid "$1" >/dev/null 2>&1; }
# wait_guest_gone NAME STEP: the guest powered itself off; its domain must go away within 120 s.
wait_guest_gone() {
    n=0
    while guest_running "$1"; do n=$((n + 1)); [ $n -gt 120 ] && break; sleep 1; done
    if guest_running "$1"; then
        fail "$2" "the guest $1 still exists 120 s after its last verdict"
        xl destroy "$1"
    else
        pass "$2"
    fi
}
backend_devices() {
    xenstore-list /local/domain/0/backend/vbd 2>/dev/null | while read -r d; do
        xenstore-list "/local/domain/0/backend/vbd/$d" 2>/dev/null | sed "s|^|$d/|"
    done
}
# no_stale_backend_nodes STEP: nothing is left under backend/vbd (within 30 s).
no_stale_backend_nodes() {
    n=0
    while [ -n "$(backend_devices)" ]; do n=$((n + 1)); [ $n -gt 30 ] && break; sleep 1; done
    left=$(backend_devices | tr '\n' ' ')
    if [ -z "$left" ]; then
        pass "$1"
    else
        fail "$1" "left under /local/domain/0/backend/vbd: $left"
    fi
}
