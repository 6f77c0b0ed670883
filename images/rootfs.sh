#!/bin/sh
# rootfs.sh DEST PACKAGE...: copy the files of the installed PACKAGEs and of
# everything they depend on into DEST, a root filesystem for a FROM-scratch
# image ("distroless" from Debian's own packages). Leaves out what a container
# never runs: docs, man pages, locales, glibc's iconv modules (gconv, 8 MB;
# Python's codecs are its own), and the packages only the package
# manager needs (dpkg, tar, perl, install-info, mailcap pull them in).
# Maintainer scripts do not run, so the alternatives links the images need
# (iptables) are copied as they are in this stage.
set -eu
dest=$1
shift
skip=" dpkg tar install-info perl perl-base perl-modules-5.36 libperl5.36 libgdbm-compat4 mailcap mime-support debconf "
closure=$(apt-cache depends --recurse --installed --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances "$@" | grep -v '^ ' | grep -v '^<' | sort -u)
mkdir -p "$dest/usr"
# Debian's merged /usr: /bin, /sbin and /lib* are links into /usr, and the files
# packages list under them are copied to their /usr paths.
for link in bin sbin lib lib64; do
  if [ -L "/$link" ]; then cp -a "/$link" "$dest/"; fi
done
for pkg in $closure; do
  case "$skip" in *" $pkg "*) continue ;; esac
  dpkg-query -L "$pkg"
done | while read -r path; do
  case "$path" in
    /bin|/sbin|/lib|/lib64) continue ;;
    /usr/lib/x86_64-linux-gnu/gconv/*|/usr/share/doc*|/usr/share/man*|/usr/share/info*|/usr/share/lintian*|/usr/share/locale*|/usr/share/bug*) continue ;;
  esac
  # Directories come with their files; a listed directory alone stays out.
  if [ -L "$path" ] || [ -f "$path" ]; then printf '%s\n' "$path"; fi
done | sed -e 's#^/bin/#/usr/bin/#' -e 's#^/sbin/#/usr/sbin/#' -e 's#^/lib/#/usr/lib/#' \
  -e 's#^/lib64/#/usr/lib64/#' | sort -u | xargs -r -d '\n' cp -a --parents -t "$dest"
for alt in /etc/alternatives/*; do
  target=/usr/sbin/$(basename "$alt")
  if [ -e "$dest$(readlink -f "$alt")" ] && [ -L "$target" ]; then
    cp -a --parents "$alt" "$target" "$dest"
  fi
done
mkdir -p "$dest/tmp" "$dest/etc" "$dest/run" "$dest/var/lib"
chmod 1777 "$dest/tmp"
# Debian's /var/run is /run (base-files, not in the closure): runtimes name pod
# network namespaces /var/run/netns/..., which the cni-server opens.
ln -sfn ../run "$dest/var/run"
# busybox (agent only): sh and sleep for the chart's preStop and for debugging.
if [ -e "$dest/usr/bin/busybox" ]; then
  ln -sf busybox "$dest/usr/bin/sh"
  ln -sf busybox "$dest/usr/bin/sleep"
fi
printf 'root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n' >"$dest/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$dest/etc/group"
