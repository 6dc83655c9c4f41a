#!/bin/sh
# mmdebstrap customize hook: turn the freshly installed Debian root ($1) into the layout an
# ostree/bootc node expects. Runs on the build host after every package is installed, with
# /proc, /sys and /dev mounted in the root, so chroot "$1" CMD runs Debian's own tools.
# nestbuild caches the result (a tarball) keyed by the recipe and this file.
set -eu
root=$1

# --- kernel and initramfs: /usr/lib/modules/KVER/{vmlinuz,initramfs.img}, /boot empty ------
set -- "$root"/usr/lib/modules/*
[ $# -eq 1 ] && [ -f "$root/boot/vmlinuz-${1##*/}" ] || {
    echo "ostree-layout: expected exactly one kernel, found: $*" >&2; exit 1; }
kver=${1##*/}
# dracut with ostree-boot's module (ostree-prepare-root in the initrd, before
# initrd-root-fs.target); generic (not host-only) so it boots on any machine, not the builder's.
chroot "$root" dracut --force --quiet --no-hostonly --reproducible --add ostree \
    --compress zstd --kver "$kver" "/usr/lib/modules/$kver/initramfs.img"
chmod 0644 "$root/usr/lib/modules/$kver/initramfs.img"
mv "$root/boot/vmlinuz-$kver" "$root/usr/lib/modules/$kver/vmlinuz"
mv "$root/boot/config-$kver" "$root/usr/lib/modules/$kver/config"
find "$root/boot" -mindepth 1 -delete
rm -f "$root/vmlinuz" "$root/vmlinuz.old" "$root/initrd.img" "$root/initrd.img.old"

# --- /etc: as Debian ships it, minus what the build host leaked in -------------------------
rm -f "$root/etc/hostname" "$root/etc/resolv.conf"

# --- the package database lives with the software it describes, in /usr --------------------
# (like rpm's /usr/lib/sysimage/rpm): derived images can still apt-get install at build time;
# on a node /usr is read-only, so packages change only by building a new image.
mkdir -p "$root/usr/lib/sysimage"
mv "$root/var/lib/dpkg" "$root/usr/lib/sysimage/dpkg"
ln -s ../../usr/lib/sysimage/dpkg "$root/var/lib/dpkg"

# --- home directories and other writable top-levels point into /var (ostree convention) -----
for pair in root:var/roothome home:var/home opt:var/opt srv:var/srv mnt:var/mnt \
            media:run/media; do
    name=${pair%%:*}; target=${pair#*:}
    rm -rf "${root:?}/$name"
    ln -s "$target" "$root/$name"
done
mkdir -p "$root/var/home" "$root/var/opt" "$root/var/srv" "$root/var/mnt"
mkdir -m 0700 "$root/var/roothome"

# --- /var: no files; every directory and link is recreated by tmpfiles.d ------------------
# Package state, caches and logs of the build are dropped (a node's /var is its own).
find "$root/var" -mindepth 1 \( -type f -o -type s -o -type p \) -delete
find "$root/run" "$root/tmp" -mindepth 1 -delete
declared=$(mktemp)
awk '!/^[[:space:]]*#/ && NF >= 2 { sub(/\/$/, "", $2); print $2 }' \
    "$root"/usr/lib/tmpfiles.d/*.conf | sort -u > "$declared"
gen="$root/usr/lib/tmpfiles.d/nestbuild-debian-var.conf"
{
    echo "# Generated when the nestbuild debian base was built: /var as the packages left it."
    (cd "$root" && find var -mindepth 1 \( -type d -o -type l \) | sort) | while read -r p; do
        grep -qxF "/$p" "$declared" && continue
        if [ -L "$root/$p" ]; then
            echo "L /$p - - - - $(readlink "$root/$p")"
        else
            chroot "$root" stat -c 'd %n %04a %U %G -' "/$p"
        fi
    done
} > "$gen"
rm -f "$declared"

# --- every user and group in /etc/passwd and /etc/group has a sysusers.d entry -------------
chroot "$root" sh -c '
    cat /usr/lib/sysusers.d/*.conf | awk "!/^#/ && NF >= 2 { print \$1, \$2 }" > /tmp/declared
    out=/usr/lib/sysusers.d/nestbuild-debian.conf
    echo "# Generated when the nestbuild debian base was built: users and groups the packages created." > $out
    while IFS=: read -r name _ gid _; do
        grep -qxE "[gu] $name" /tmp/declared || printf "g %s %s\n" "$name" "$gid" >> $out
    done < /etc/group
    while IFS=: read -r name _ uid gid gecos home shell; do
        grep -qx "u $name" /tmp/declared ||
            printf "u %s %s:%s \"%s\" %s %s\n" "$name" "$uid" "$gid" "${gecos%%,*}" "$home" "$shell" >> $out
    done < /etc/passwd
    rm -f /tmp/declared'
