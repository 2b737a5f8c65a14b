#!/usr/bin/env python3
"""Shared-library closure of ELF programs inside an unpacked Debian tree.

Usage: elfdeps.py ROOT FILE...

Each FILE is a path inside ROOT (or an absolute path outside it, such as a .NET publish). Prints,
one per line, every path relative to ROOT that a copy of FILE needs at run time: the dynamic loader,
each DT_NEEDED library found the way ld.so would find it (DT_RPATH/DT_RUNPATH with $ORIGIN, then the
multiarch directories), and every symlink on the way to the real file, so the copy keeps the sonames.
Exits 1 naming each library that is not in ROOT: the package list misses a package, and a guest
started without it would fail much later with a less helpful message.

Reads ELF headers directly so that the host needs neither binutils nor the same libraries.
"""
import os
import struct
import sys

# Where Debian 12's ld.so looks when no ld.so.cache exists (the built-in system directories).
SYSTEM_DIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib"]

PT_INTERP, PT_DYNAMIC = 3, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29


def read_elf(path):
    """Returns (interp, needed, search_paths) of a 64-bit little-endian ELF, or None if not one."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, interp, dynamic = [], None, None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_INTERP:
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return interp, [], []

    def file_offset(vaddr):
        for base, off, size in loads:
            if base <= vaddr < base + size:
                return off + (vaddr - base)
        raise ValueError(f"{path}: address {vaddr:#x} is not in a loaded segment")

    entries, strtab = [], None
    off, end = dynamic[0], dynamic[0] + dynamic[1]
    while off + 16 <= end:
        tag, val = struct.unpack_from("<qQ", data, off)
        off += 16
        if tag == DT_NULL:
            break
        if tag == DT_STRTAB:
            strtab = file_offset(val)
        entries.append((tag, val))

    def string(index):
        stop = data.index(b"\0", strtab + index)
        return data[strtab + index:stop].decode()

    needed = [string(v) for t, v in entries if t == DT_NEEDED]
    paths = []
    for t, v in entries:
        if t in (DT_RPATH, DT_RUNPATH):
            paths.extend(p for p in string(v).split(":") if p)
    return interp, needed, paths


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    root = os.path.abspath(sys.argv[1])
    wanted = set()
    missing = []
    queue = []

    def add_with_links(rel):
        """Adds rel and, if it is a symlink inside root, the chain of links to the real file."""
        seen = 0
        while rel not in wanted and seen < 16:
            wanted.add(rel)
            full = os.path.join(root, rel)
            if not os.path.islink(full):
                return rel
            target = os.readlink(full)
            rel = os.path.normpath(os.path.join(os.path.dirname(rel), target) if not target.startswith("/")
                                   else target.lstrip("/"))
            seen += 1
        return rel

    for arg in sys.argv[2:]:
        if os.path.isabs(arg) and not arg.startswith(root + os.sep):
            queue.append(arg)  # outside the tree: resolve its libraries, do not list it
        else:
            rel = os.path.relpath(arg, root) if os.path.isabs(arg) else arg
            if not os.path.lexists(os.path.join(root, rel)):
                missing.append(f"{rel} (requested file)")
                continue
            queue.append(os.path.join(root, add_with_links(rel)))

    scanned = set()
    while queue:
        path = os.path.realpath(queue.pop())
        if path in scanned:
            continue
        scanned.add(path)
        info = read_elf(path)
        if info is None:
            continue
        interp, needed, rpaths = info
        if interp:
            rel = interp.lstrip("/")
            if os.path.lexists(os.path.join(root, rel)):
                queue.append(os.path.join(root, add_with_links(rel)))
            else:
                missing.append(f"{interp} (loader of {path})")
        origin = os.path.dirname(path)
        dirs = []
        for rp in rpaths:
            if "$ORIGIN" in rp or "${ORIGIN}" in rp:
                dirs.append(rp.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
            else:
                dirs.append(os.path.join(root, rp.lstrip("/")))
        dirs += [os.path.join(root, d) for d in SYSTEM_DIRS]
        for soname in needed:
            for d in dirs:
                candidate = os.path.join(d, soname)
                if os.path.lexists(candidate) and os.path.exists(candidate):
                    if candidate.startswith(root + os.sep):
                        queue.append(os.path.join(root, add_with_links(os.path.relpath(candidate, root))))
                    else:
                        queue.append(candidate)
                    break
            else:
                missing.append(f"{soname} (needed by {os.path.relpath(path, root)})")

    for rel in sorted(wanted):
        print(rel)
    if missing:
        for m in sorted(set(missing)):
            print(f"elfdeps: not found in {root}: {m}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
