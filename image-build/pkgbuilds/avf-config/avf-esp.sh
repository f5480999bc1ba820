# shellcheck shell=sh
# Interactive bootctl on an ESP typed Linux-filesystem (see system.conf.d).
export SYSTEMD_RELAX_ESP_CHECKS=1
