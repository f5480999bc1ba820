# shellcheck shell=sh
# At an interactive login: the installed linux-avf is not the kernel this VM
# runs (written by /usr/lib/avf/kernel-update; its first line is the
# version, shown until /proc/cmdline carries avf.kernel=<version>).
case $- in
*i*)
  if [ -r /var/lib/avf/kernel-pending ]; then
    read -r _avf_kver </var/lib/avf/kernel-pending || _avf_kver=""
    case " $(cat /proc/cmdline) " in
    *" avf.kernel=$_avf_kver "*) ;;
    *) tail -n +2 /var/lib/avf/kernel-pending >&2 ;;
    esac
    unset _avf_kver
  fi
  ;;
esac
