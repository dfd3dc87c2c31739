SUMMARY = "GRUB environment of the qemux86-64 image: both RAUC slots good, A first"
DESCRIPTION = "Deploys grubenv, which vigil-image puts at EFI/BOOT/grubenv on the EFI \
               partition for wic/vigil-grub.cfg (RAUC's GRUB A/B scheme)."
SECTION = "bootloaders"
LICENSE = "Apache-2.0"
# nooelint: oelint.var.licenseremotefile - made by this layer (the repository's licence), from no source file
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

COMPATIBLE_MACHINE = "qemux86-64"

DEPENDS = "grub-native"

inherit deploy nopackages

do_configure[noexec] = "1"
do_compile[noexec] = "1"
do_install[noexec] = "1"

do_deploy() {
    rm -f ${DEPLOYDIR}/grubenv
    grub-editenv ${DEPLOYDIR}/grubenv set ORDER="A B" A_OK=1 B_OK=1 A_TRY=0 B_TRY=0
}

addtask deploy after do_compile before do_build
