#!/bin/sh
# RAUC's custom bootloader backend on a Jetson with UEFI A/B rootfs slots (JetPack 6):
# RAUC's bootname A is nvbootctrl's rootfs slot 0 (APP), B is slot 1 (APP_b).
#   get-primary            prints the slot UEFI boots next
#   set-primary A|B        makes that slot boot next
#   get-state A|B          prints good or bad
#   set-state A|B good|bad marks it (good: the running slot booted successfully)
#   get-current            prints the running slot
# Untested: no Jetson here (yocto/README.md).
set -eu

slot() { case "$1" in A) echo 0 ;; B) echo 1 ;; *) echo "unknown slot $1" >&2; exit 1 ;; esac; }
name() { case "$1" in 0|A) echo A ;; 1|B) echo B ;; *) echo "unknown slot $1" >&2; exit 1 ;; esac; }
ctl() { nvbootctrl -t rootfs "$@"; }

case "${1:-}" in
get-primary)
    # "Active rootfs slot: A|B" is the one UEFI boots next (L4T R36's dump-slots-info).
    name "$(ctl dump-slots-info | sed -n 's/^Active rootfs slot: *\([AB01]\).*/\1/p' | head -n 1)"
    ;;
set-primary)
    ctl set-active-boot-slot "$(slot "$2")"
    ;;
get-state)
    if ctl is-slot-bootable "$(slot "$2")" >/dev/null 2>&1; then echo good; else echo bad; fi
    ;;
set-state)
    case "$3" in
    good)
        [ "$(name "$(ctl get-current-slot)")" = "$2" ] && ctl mark-boot-successful
        ;;
    bad)
        ctl set-slot-as-unbootable "$(slot "$2")"
        ;;
    *) echo "unknown state $3" >&2; exit 1 ;;
    esac
    ;;
get-current)
    name "$(ctl get-current-slot)"
    ;;
*)
    echo "usage: $0 get-primary | set-primary SLOT | get-state SLOT | set-state SLOT good|bad | get-current" >&2
    exit 1
    ;;
esac
