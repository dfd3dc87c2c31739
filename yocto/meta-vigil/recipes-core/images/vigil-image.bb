SUMMARY = "Vigil appliance image: systemd, Vigil, RAUC A/B, read-only root, data partition"
DESCRIPTION = "core-image-minimal with systemd, the vigil service, its model and ONNX \
               Runtime, and RAUC. The root file system is read-only; the data partition at \
               /data keeps Vigil's state and RAUC's. No login but with an SSH key."
SECTION = "images"
LICENSE = "Apache-2.0"

# As core-image-minimal (oe-core's recipes-core/images/core-image-minimal.bb), plus Vigil.
IMAGE_INSTALL = "packagegroup-core-boot ${CORE_IMAGE_EXTRA_INSTALL} vigil rauc vigil-data"
# nooelint: oelint.vars.notneededspace - core-image-minimal's value: a space, so no locale is installed
IMAGE_LINGUAS = " "

inherit core-image

# Read-only root; no debug-tweaks, no empty root password, no password login at all: the only
# way in is an SSH key given by VIGIL_SSH_AUTHORIZED_KEYS (then dropbear is installed).
IMAGE_FEATURES:append = " read-only-rootfs"
IMAGE_FEATURES:remove = "debug-tweaks allow-empty-password empty-root-password allow-root-login post-install-logging"
VIGIL_SSH_AUTHORIZED_KEYS ??= ""
VIGIL_SSH_AUTHORIZED_KEYS[doc] = "Absolute path of an authorized_keys file for root (empty: no SSH at all)."
IMAGE_INSTALL:append = " ${@'dropbear' if d.getVar('VIGIL_SSH_AUTHORIZED_KEYS') else ''}"
ROOTFS_POSTPROCESS_COMMAND:append = " vigil_ssh_key;"

vigil_ssh_key[doc] = "Installs VIGIL_SSH_AUTHORIZED_KEYS as root's authorized_keys (a rootfs post-process command)."
vigil_ssh_key() {
    if [ -n "${VIGIL_SSH_AUTHORIZED_KEYS}" ]; then
        install -d -m 0700 ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh
        install -m 0600 ${VIGIL_SSH_AUTHORIZED_KEYS} ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh/authorized_keys
    fi
}

IMAGE_ROOTFS_EXTRA_SPACE = "65536"

# qemux86-64: one disk with EFI (GRUB), rootfs A, rootfs B and data (wic/vigil-qemux86-64.wks);
# each slot boots its own kernel from /boot of its root file system. Jetson: the tegraflash
# package of meta-tegra (yocto/kas/jetson-orin-nano-devkit.yml sets IMAGE_FSTYPES), flashed
# with doflash.sh.
IMAGE_FSTYPES:append:qemux86-64 = " wic ext4"
WKS_FILE:qemux86-64 = "vigil-qemux86-64.wks"
IMAGE_INSTALL:append:qemux86-64 = " kernel-image"
# nooelint: oelint.vars.mispell - IMAGE_EFI_BOOT_FILES is wic's bootimg-efi variable (extra files on the EFI partition)
IMAGE_EFI_BOOT_FILES:append:qemux86-64 = " grubenv;EFI/BOOT/grubenv"
# nooelint: oelint.vars.mispell.unknown - do_image_wic is image_types_wic's task: it needs the GRUB environment deployed
do_image_wic[depends] += "${@'vigil-grubenv:do_deploy' if d.getVar('MACHINE') == 'qemux86-64' else ''}"
