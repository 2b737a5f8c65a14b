# Host side of the real-Xen runs (bash; sourced by tools/e2e/run, tools/e2e/compare and
# tools/e2e/soak): the pinned Debian packages, the initramfs images, the XenDisk layer, and one QEMU
# boot whose dom0 markers become step lines. The caller sets the option variables below, then calls
# prepare_images (and prepare_xendisk for a scenario that needs XenDisk) and boot. See docs/E2E.md.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
e2e="$repo/tools/e2e"
cache=${XENDISK_E2E_CACHE:-$repo/.e2e-cache}
logs="$repo/artifacts/e2e"
pins_file="$e2e/packages.txt"
root="$cache/root"
build="$cache/build"
kernel_version= # from the pins, see kernel_version()

# Options the caller may change before prepare_images.
qemu_timeout=3600
qemu_memory=2048 # MiB for the whole machine: Xen, dom0's 1 GiB and the guests
repin=false
xendisk_mode=none # none | publish | dir
xendisk_dir=

passed=0 failed=0 skipped=0
t_run=$SECONDS
t_step=$SECONDS
report_pass() { echo "PASS $1 ($((SECONDS - t_step))s)"; passed=$((passed + 1)); t_step=$SECONDS; }
report_fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); t_step=$SECONDS; }
report_skip() { echo "SKIP $1: $2"; skipped=$((skipped + 1)); t_step=$SECONDS; }
# Notes go to fd 3, the run's stderr, so that a step whose output is captured for its failure
# reason still shows them.
exec 3>&2
note() { echo "  $*" >&3; }
closing() {
  echo "e2e: total $((SECONDS - t_run))s; logs in ${logs#"$repo"/}"
  echo "e2e: $passed passed, $failed failed, $skipped skipped"
  [ "$failed" -eq 0 ]
}
die_after() { report_fail "$1" "$2"; closing; exit 1; }

mkdir -p "$cache/debs" "$logs"

# --- host tools -------------------------------------------------------------------------------------
apt_updated=false
apt_update_once() {
  $apt_updated && return 0
  apt_updated=true
  apt-get -o DPkg::Lock::Timeout=600 update -qq >"$logs/apt-update.log" 2>&1
}
host_tools() {
  local -A need=([qemu-system-x86_64]=qemu-system-x86 [cpio]=cpio [python3]=python3 [gzip]=gzip
                 [timeout]=coreutils [dpkg-deb]=dpkg [apt-get]=apt)
  local missing=() cmd
  for cmd in "${!need[@]}"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then echo "missing ${missing[*]} and not root to install them"; return 1; fi
  apt_update_once
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${missing[@]}" >"$logs/apt-install.log" 2>&1 || { echo "apt-get install ${missing[*]} failed (see $logs/apt-install.log)"; return 1; }
}

# --- packages ---------------------------------------------------------------------------------------
pins() { sed -e 's/#.*//' -e 's/[[:space:]]//g' "$pins_file" | grep -v '^$'; }
# The kernel's ABI name (6.1.0-NN-amd64) from its pin: module paths and /boot names use it.
kernel_version() { pins | sed -n 's/^linux-image-\([0-9].*-amd64\)=.*/\1/p' | head -n 1; }
deb_of() { # deb_of NAME=VERSION -> the cached .deb for that pin, if downloaded
  local name=${1%%=*} version=${1#*=}
  compgen -G "$cache/debs/${name}_${version//:/%3a}_*.deb" | head -n 1
}
repin_packages() {
  apt_update_once
  local tmp line name candidate
  tmp=$(mktemp)
  while IFS= read -r line; do
    if [[ "$line" =~ ^([a-z0-9][a-z0-9.+-]*)=([^[:space:]#]+)(.*)$ ]]; then
      name=${BASH_REMATCH[1]}
      # A new kernel ABI is a new package name: follow what linux-image-amd64 depends on now.
      if [[ "$name" == linux-image-[0-9]*-amd64 ]]; then
        name=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        [ -n "$name" ] || { echo "linux-image-amd64 depends on no kernel image" >&2; rm -f "$tmp"; return 1; }
      fi
      candidate=$(apt-cache policy "$name" | awk '/Candidate:/ {print $2}')
      if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then echo "no candidate for $name" >&2; rm -f "$tmp"; return 1; fi
      [ "$candidate" != "${BASH_REMATCH[2]}" ] && note "repin: $name ${BASH_REMATCH[2]} -> $candidate"
      echo "$name=$candidate${BASH_REMATCH[3]}"
    else
      echo "$line"
    fi
  done <"$pins_file" >"$tmp"
  cat "$tmp" >"$pins_file" && rm -f "$tmp"
}
download_packages() {
  local wanted=() pin
  while IFS= read -r pin; do [ -n "$(deb_of "$pin")" ] || wanted+=("$pin"); done < <(pins)
  [ ${#wanted[@]} -eq 0 ] && return 0
  note "downloading ${#wanted[@]} package(s) into ${cache#"$repo"/}/debs"
  if ! (cd "$cache/debs" && apt-get -o APT::Sandbox::User=root download "${wanted[@]}" >"$logs/apt-download.log" 2>&1); then
    apt_update_once
    (cd "$cache/debs" && apt-get -o APT::Sandbox::User=root download "${wanted[@]}" >"$logs/apt-download.log" 2>&1)
  fi
  local gone=() candidate
  for pin in "${wanted[@]}"; do
    if [ -z "$(deb_of "$pin")" ]; then
      candidate=$(apt-cache policy "${pin%%=*}" 2>/dev/null | awk '/Candidate:/ {print $2}')
      gone+=("$pin (apt offers ${candidate:-nothing})")
    fi
  done
  if [ ${#gone[@]} -gt 0 ]; then
    echo "not downloadable: ${gone[*]}; run tools/e2e/run --repin to pin what apt offers now (log: ${logs#"$repo"/}/apt-download.log)"
    return 1
  fi
}

# --- unpacked tree ----------------------------------------------------------------------------------
unpack_tree() {
  local stamp pin
  stamp=$(pins | sha256sum | cut -d' ' -f1)
  [ -f "$root/.e2e-stamp" ] && [ "$(cat "$root/.e2e-stamp")" = "$stamp" ] && return 0
  note "unpacking $(pins | wc -l) packages into ${root#"$repo"/}"
  rm -rf "$root" && mkdir -p "$root"
  while IFS= read -r pin; do dpkg-deb -x "$(deb_of "$pin")" "$root" || { echo "dpkg-deb -x failed for $pin"; return 1; }; done < <(pins)
  # The kernel package ships no modules.dep; busybox's depmod writes one (and modules.alias).
  "$root/bin/busybox" depmod -b "$root" "$kernel_version" || { echo "busybox depmod failed"; return 1; }
  echo "$stamp" >"$root/.e2e-stamp"
}

# --- initramfs images -------------------------------------------------------------------------------
# stage_init STAGE: an empty usr-merged tree with busybox and its applets.
stage_init() {
  local stage=$1 applet
  rm -rf "$stage" && mkdir -p "$stage"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,proc,sys,dev,tmp,run,var,root,mnt}
  ln -s usr/bin "$stage/bin"; ln -s usr/sbin "$stage/sbin"; ln -s usr/lib "$stage/lib"; ln -s usr/lib64 "$stage/lib64"
  cp "$root/bin/busybox" "$stage/usr/bin/busybox"
  while IFS= read -r applet; do
    applet=${applet#usr/}
    [ -e "$stage/usr/$applet" ] || ln -s /usr/bin/busybox "$stage/usr/$applet"
  done < <("$root/bin/busybox" --list-full)
}
# stage_copy STAGE PATH...: copies paths of the unpacked tree (and their shared-library closure),
# keeping symlinks and sonames; a program replaces the busybox applet of the same name.
stage_copy() {
  local stage=$1; shift
  local list
  list=$(cd "$root" && python3 "$e2e/lib/elfdeps.py" "$root" "$@") || return 1
  # Remove busybox applet links that a real program is about to replace.
  local path
  while IFS= read -r path; do
    [ -L "$stage/$path" ] && [ "$(readlink "$stage/$path")" = /usr/bin/busybox ] && rm -f "$stage/$path"
  done <<<"$list"
  (cd "$root" && tar -cf - --no-recursion $list) | tar -C "$stage" --keep-directory-symlink -xf - || return 1
}
# stage_modules STAGE MODULE...: the modules with their dependency closure, and a modules.dep.
stage_modules() {
  local stage=$1; shift
  local moddir="lib/modules/$kernel_version" m file files=() queue=()
  for m in "$@"; do
    file=$(cd "$root/$moddir" && grep -E "(^|/)(${m//[-_]/[-_]})\.ko(\.[a-z]+)?:" modules.dep | head -n 1 | cut -d: -f1)
    [ -n "$file" ] || { echo "module $m is not in $moddir/modules.dep"; return 1; }
    queue+=("$file")
  done
  while [ ${#queue[@]} -gt 0 ]; do
    file=${queue[0]}; queue=("${queue[@]:1}")
    [[ " ${files[*]} " == *" $file "* ]] && continue
    files+=("$file")
    # shellcheck disable=SC2207
    queue+=($(grep -F "$file:" "$root/$moddir/modules.dep" | head -n 1 | cut -d: -f2))
  done
  mkdir -p "$stage/usr/$moddir"
  (cd "$root/$moddir" && tar -cf - "${files[@]}" modules.builtin modules.order) | tar -C "$stage/usr/$moddir" -xf - || return 1
  "$root/bin/busybox" depmod -b "$stage" "$kernel_version"
}
# pack STAGE OUT: a newc archive, gzipped when OUT ends in .gz. The guest's archives stay plain:
# libxc unzips a gzipped PV ramdisk itself and would stop at the first of two concatenated members.
pack() {
  local compress=cat
  [[ "$2" == *.gz ]] && compress="gzip -6"
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | $compress >"$2.tmp") && mv "$2.tmp" "$2"
}

# layer_begin STAGE: an empty tree for a second archive that the kernel unpacks over the first; the
# top-level links only route copies into usr/ and are removed again by layer_pack.
layer_begin() {
  rm -rf "$1" && mkdir -p "$1"/usr/{bin,sbin,lib,lib64}
  ln -s usr/bin "$1/bin"; ln -s usr/sbin "$1/sbin"; ln -s usr/lib "$1/lib"; ln -s usr/lib64 "$1/lib64"
}
# layer_pack STAGE BASE OUT: packs what STAGE has and BASE does not.
layer_pack() {
  local stage=$1 base=$2 path
  rm -f "$stage/bin" "$stage/sbin" "$stage/lib" "$stage/lib64"
  while IFS= read -r path; do
    [ -e "$base/$path" ] || [ -L "$base/$path" ] && rm -f "$stage/$path"
  done < <(cd "$stage" && find . \( -type f -o -type l \) | sed 's|^\./||')
  pack "$stage" "$3"
}
build_domU() {
  local stage="$build/domU" layer="$build/domU-fio"
  stage_init "$stage"
  # xenstore-read lets the guest read its own frontend and backend keys (the negotiated features)
  # and the go-ahead dom0 writes under its data/ directory (the two-guest overlay check).
  stage_copy "$stage" sbin/mke2fs sbin/mkfs.ext4 etc/mke2fs.conf bin/dd lib/x86_64-linux-gnu/libgcc_s.so.1 \
    usr/bin/xenstore-read || return 1
  stage_modules "$stage" xen-blkfront ext4 crc32c_generic || return 1
  install -m 755 "$e2e/domU/init" "$stage/init"
  # The fio job files of tools/e2e/compare (small text files; fio itself is in the layer below).
  mkdir -p "$stage/etc/e2e/workloads"
  install -m 644 "$e2e"/workloads/*.fio "$stage/etc/e2e/workloads/"
  pack "$stage" "$build/domU.cpio"
  # fio and its ~80 MB of libraries boot only in the guests that run it (see dom0/checks.sh). The
  # layer depends on the pins alone, so it is rebuilt only when they change.
  [ -f "$build/fio.cpio" ] && [ "$build/fio.cpio" -nt "$root/.e2e-stamp" ] && return 0
  layer_begin "$layer"
  stage_copy "$layer" usr/bin/fio || return 1
  layer_pack "$layer" "$stage" "$build/fio.cpio"
}
build_dom0() {
  local stage="$build/dom0" xenbin=usr/lib/xen-4.17/bin
  stage_init "$stage"
  local xenstore_tools=()
  mapfile -t xenstore_tools < <(cd "$root" && find usr/bin -name 'xenstore*' ! -name xenstore-control | sort)
  # qemu-img checks and reads the qcow2 overlays XenDisk wrote (QEMU is the reference qcow2 reader).
  # libxl-save-helper writes and reads a domain's memory for xl save, restore and migrate. lvm
  # builds the volume group of the LVM checks (dmsetup shows the device-mapper tables). tgtd and
  # tgtadm export a LUN inside dom0 that iscsid and iscsiadm attach through the kernel's initiator.
  stage_copy "$stage" $xenbin/xl $xenbin/xenstored $xenbin/xenconsoled $xenbin/xen-init-dom0 $xenbin/libxl-save-helper \
    "${xenstore_tools[@]}" bin/bash usr/bin/flock usr/bin/stat bin/dd lib/x86_64-linux-gnu/libgcc_s.so.1 \
    usr/bin/qemu-img sbin/lvm sbin/dmsetup usr/sbin/tgtd usr/sbin/tgtadm sbin/iscsid sbin/iscsiadm $(cd "$root" && ls usr/lib/x86_64-linux-gnu/libxen*.so.* | sort) || return 1
  ln -sf ../lib/xen-4.17/bin/xl "$stage/usr/sbin/xl"
  local tool
  for tool in pvcreate vgcreate lvcreate lvextend lvs vgs pvs; do ln -sf lvm "$stage/usr/sbin/$tool"; done
  (cd "$root" && tar -cf - etc/xen) | tar -C "$stage" --keep-directory-symlink -xf - || return 1
  install -m 755 "$repo/config/xendisk-hotplug" "$stage/etc/xen/scripts/xendisk"
  install -m 755 "$e2e/dom0/e2e-phy" "$stage/etc/xen/scripts/e2e-phy"
  # ata_piix and sd_mod for the disk QEMU gives dom0 (see boot), dm-mod for LVM on it, iscsi_tcp
  # and crc32c_generic (the connection asks the crypto API for crc32c by name) for the kernel initiator.
  stage_modules "$stage" xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd loop xen-blkback ata_piix sd_mod dm-mod iscsi_tcp crc32c_generic || return 1
  mkdir -p "$stage/guest"
  cp "$root/boot/vmlinuz-$kernel_version" "$stage/guest/vmlinuz"
  cp "$build/domU.cpio" "$build/fio.cpio" "$stage/guest/"
  install -m 755 "$e2e/dom0/init" "$stage/init"
  mkdir -p "$stage/usr/lib/e2e"
  install -m 644 "$e2e/dom0/lib.sh" "$e2e/dom0/checks.sh" "$e2e/dom0/compare.sh" "$e2e/dom0/soak.sh" "$stage/usr/lib/e2e/"
  pack "$stage" "$build/dom0.cpio.gz"
}

# --- XenDisk --------------------------------------------------------------------------------------
# publish_xendisk DIR: the command line as dom0 runs it, compiled ahead of time (Native AOT, linked
# by clang, which tools/setup installs): one native executable, nothing for a JIT to compile at
# start-up, which under TCG is what made each start of a JIT-compiled `xendisk serve` take tens of
# seconds (1.5-2.5 minutes before the trimmed build was precompiled with ReadyToRun).
publish_xendisk() {
  command -v dotnet >/dev/null 2>&1 || { echo "dotnet is not on PATH (run tools/setup)"; return 1; }
  command -v clang >/dev/null 2>&1 || { echo "clang is not installed; Native AOT links with it (run tools/setup)"; return 1; }
  rm -rf "$1"
  dotnet publish "$repo/src/XenDisk.Cli/XenDisk.Cli.csproj" -c Release -r linux-x64 -p:PublishAot=true \
    -p:InvariantGlobalization=true -o "$1" --nologo >"$logs/xendisk-publish.log" 2>&1 ||
    { echo "dotnet publish failed: $(grep -m 3 -E 'error' "$logs/xendisk-publish.log" | tr '\n' ' ')(log: ${logs#"$repo"/}/xendisk-publish.log)"; return 1; }
  # The separate debug symbols and PDBs are for a debugger on the host, not for dom0's RAM disk.
  rm -f "$1"/*.dbg "$1"/*.pdb
}
# build_xendisk_layer DIR: a second cpio (the kernel unpacks concatenated archives in order) with the
# publish under /opt/xendisk and the shared libraries its native parts need from the Debian tree.
build_xendisk_layer() {
  local dir=$1 stage="$build/xendisk" elves=() f
  [ -x "$dir/xendisk" ] || { echo "$dir has no xendisk executable (expected a Native AOT or self-contained publish)"; return 1; }
  layer_begin "$stage"
  mkdir -p "$stage/opt/xendisk"
  cp -a "$dir/." "$stage/opt/xendisk/"
  # The LTTng trace provider needs liblttng-ust, which dom0 does not have; the runtime loads it only
  # when present and runs without it.
  rm -f "$stage/opt/xendisk/libcoreclrtraceptprovider.so"
  while IFS= read -r f; do
    head -c 4 "$f" | grep -q 'ELF' && elves+=("$f")
  done < <(find "$stage/opt/xendisk" -maxdepth 1 -type f \( -name xendisk -o -name '*.so' \))
  # The native interop loads libxengnttab.so.1, libxenevtchn.so.1 and libxenstore.so.4 by name.
  stage_copy "$stage" "${elves[@]}" lib/x86_64-linux-gnu/libgcc_s.so.1 \
    usr/lib/x86_64-linux-gnu/libxengnttab.so.1 usr/lib/x86_64-linux-gnu/libxenevtchn.so.1 \
    usr/lib/x86_64-linux-gnu/libxenstore.so.4 || return 1
  ln -s /opt/xendisk/xendisk "$stage/usr/bin/xendisk"
  layer_pack "$stage" "$build/dom0" "$build/xendisk.cpio.gz"
  note "xendisk layer: $(du -sh "$dir" | cut -f1) publish, $(du -h "$build/xendisk.cpio.gz" | cut -f1) compressed"
}

# build_qdisk_layer: a third archive for the compare scenario's dom0 with qemu-system-xen (QEMU's
# xen-block, which libxl starts for a guest whose disks say `backendtype=qdisk`) at the path Debian's
# libxl runs it from, and its shared-library closure. The other scenarios boot without it.
build_qdisk_layer() {
  local stage="$build/qdisk"
  layer_begin "$stage"
  # QEMU reads its keymap at start even with -vnc none (libxl's arguments for a PV guest).
  stage_copy "$stage" usr/libexec/xen-qemu-system-i386 usr/share/qemu/keymaps/en-us || return 1
  layer_pack "$stage" "$build/dom0" "$build/qdisk.cpio.gz"
}

# --- preparation ------------------------------------------------------------------------------------
# prepare_images: host tools, packages, the unpacked tree and both images, one step line each; stops
# the run (exit 1) when one fails, since nothing can boot without them.
prepare_images() {
  local msg
  echo "e2e: real Xen under QEMU TCG; cache ${cache}"
  if host_tools >"$logs/host-tools.out" 2>&1; then report_pass host-tools; else die_after host-tools "$(cat "$logs/host-tools.out")"; fi
  if $repin; then
    if repin_packages; then report_pass repin; else die_after repin "apt-cache policy gave no candidate"; fi
  fi
  kernel_version=$(kernel_version)
  [ -n "$kernel_version" ] || die_after packages "tools/e2e/packages.txt pins no linux-image-<abi>-amd64"
  if msg=$(download_packages); then report_pass packages; else die_after packages "$msg"; fi
  if msg=$(unpack_tree 2>&1); then report_pass unpack; else die_after unpack "$msg"; fi
  mkdir -p "$build"
  cp "$root/boot/vmlinuz-$kernel_version" "$build/vmlinuz"
  if msg=$(build_domU 2>&1); then report_pass "initramfs-domU ($(du -h "$build/domU.cpio" | cut -f1) + fio layer $(du -h "$build/fio.cpio" | cut -f1))"; else die_after initramfs-domU "$msg"; fi
  if msg=$(build_dom0 2>&1); then report_pass "initramfs-dom0 ($(du -h "$build/dom0.cpio.gz" | cut -f1))"; else die_after initramfs-dom0 "$msg"; fi
}
# prepare_xendisk PREFIX: publishes src/XenDisk.Cli (xendisk_mode=publish) or takes xendisk_dir, and
# writes $build/dom0-xendisk.cpio.gz (dom0's image with the XenDisk layer). Step lines are named
# PREFIX/publish and PREFIX/initramfs-layer; returns 1 after a FAIL line.
prepare_xendisk() {
  local msg
  if [ "$xendisk_mode" = publish ]; then
    xendisk_dir="$cache/xendisk-publish"
    if msg=$(publish_xendisk "$xendisk_dir"); then report_pass "$1/publish"; else report_fail "$1/publish" "$msg"; return 1; fi
  fi
  if msg=$(build_xendisk_layer "$xendisk_dir" 2>&1); then report_pass "$1/initramfs-layer"; else report_fail "$1/initramfs-layer" "$msg"; return 1; fi
  cat "$build/dom0.cpio.gz" "$build/xendisk.cpio.gz" >"$build/dom0-xendisk.cpio.gz"
}

# --- one boot ---------------------------------------------------------------------------------------
# boot SCENARIO INITRD [DOM0-ARGS]: runs QEMU once and turns the markers in the serial log into step
# lines. dom0 reads its scenario (and any e2e_* words in DOM0-ARGS) from its kernel command line;
# the markers stay in $logs/SCENARIO/markers for the caller.
boot() {
  local scenario=$1 initrd=$2 dir="$logs/$1"
  rm -rf "$dir" && mkdir -p "$dir"
  zcat "$root/boot/xen-4.17-amd64.gz" >"$build/xen"
  local xen_args="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all"
  # A comma inside a module's arguments would end the module in QEMU's -initrd list.
  local dom0_args="console=hvc0 earlyprintk=xen loglevel=4 e2e_scenario=$scenario ${3:-}"
  note "$scenario: booting Xen under QEMU (TCG), up to ${qemu_timeout}s; serial log ${dir#"$repo"/}/serial.log"
  local t0=$SECONDS rc qemu
  : >"$dir/serial.log"
  # A blank 1 GiB disk for dom0 (its /dev/sda through ata_piix): xl save writes a guest's memory to
  # it (dom0's RAM file system is too small for that), then the LVM checks put their volume group on
  # it. Sparse, and removed after the boot.
  local disk="$build/dom0-disk-$scenario.img"
  rm -f "$disk" && truncate -s 1G "$disk"
  timeout --kill-after=10 "$qemu_timeout" qemu-system-x86_64 -accel tcg -machine pc -m "$qemu_memory" -smp 2 \
    -display none -no-reboot -monitor none -serial "file:$dir/serial.log" \
    -drive "file=$disk,format=raw,if=ide,index=0,media=disk" \
    -kernel "$build/xen" -append "$xen_args" -initrd "$build/vmlinuz ${dom0_args% },$initrd" \
    >"$dir/qemu.log" 2>&1 &
  qemu=$!
  # Progress while it runs (stderr): dom0's verdicts as they appear. tail stops when QEMU does.
  tail --pid="$qemu" -n +1 -F "$dir/serial.log" 2>/dev/null |
    grep --line-buffered -a -o $'E2E: \\(PASS\\|FAIL\\|SKIP\\) [^\r]*' | sed -u "s|^E2E: |    $scenario: |" >&2
  wait "$qemu"
  rc=$?
  rm -f "$disk"
  tr -d '\r' <"$dir/serial.log" | grep -a -o 'E2E: .*' >"$dir/markers" || true
  local plan
  plan=$(sed -n 's/^E2E: PLAN //p' "$dir/markers" | head -n 1)
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    report_fail "$scenario/boot" "QEMU killed after ${qemu_timeout}s (last serial lines: $(tail -n 3 "$dir/serial.log" | tr -d '\r' | tr '\n' '|'))"
  elif [ "$rc" -ne 0 ]; then
    report_fail "$scenario/boot" "QEMU exited with status $rc: $(tail -n 3 "$dir/qemu.log" | tr '\n' ' ')"
  elif [ -z "$plan" ]; then
    report_fail "$scenario/boot" "dom0's init never ran (see ${dir#"$repo"/}/serial.log)"
  else
    t_step=$t0; report_pass "$scenario/boot"
  fi
  # One line per planned step, in plan order, then anything reported that was not planned.
  local step line verdict
  declare -A seen=()
  while IFS= read -r line; do
    case "$line" in
      "E2E: PASS "*|"E2E: FAIL "*|"E2E: SKIP "*) ;;
      *) continue ;;
    esac
    verdict=${line#E2E: }; step=${verdict#* }; step=${step%%[: ]*}
    seen[$step]=1
    case "$verdict" in
      PASS*) echo "PASS $scenario/${verdict#PASS }"; passed=$((passed + 1)) ;;
      FAIL*) echo "FAIL $scenario/${verdict#FAIL }"; failed=$((failed + 1)) ;;
      SKIP*) echo "SKIP $scenario/${verdict#SKIP }"; skipped=$((skipped + 1)) ;;
    esac
  done <"$dir/markers"
  for step in $plan; do
    [ -n "${seen[$step]:-}" ] || { echo "FAIL $scenario/$step: no verdict (dom0 stopped before this step)"; failed=$((failed + 1)); }
  done
  if [ -n "$plan" ] && ! grep -q '^E2E: DONE' "$dir/markers"; then
    echo "FAIL $scenario/finish: dom0 did not reach its end (see ${dir#"$repo"/}/serial.log)"; failed=$((failed + 1))
  fi
  t_step=$SECONDS
}
