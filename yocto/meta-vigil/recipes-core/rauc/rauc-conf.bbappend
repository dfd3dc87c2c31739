# Vigil's RAUC system configuration: two root file system slots (A/B), the compatible string
# vigil-${MACHINE} (the bundle recipe sets the same), and the keyring: the certificate of the
# CA that signs your bundles, given by VIGIL_RAUC_KEYRING (an absolute path, kept out of this
# repository; never a private key). The system.conf is per machine: files/qemux86-64/ (GRUB on
# EFI) and files/tegra/ (NVIDIA's UEFI A/B rootfs slots through nvbootctrl).
VIGIL_RAUC_KEYRING ??= ""
VIGIL_RAUC_KEYRING[doc] = "Absolute path of the PEM certificate (CA) that bundles must chain to."

# The certificate is fetched by its file name from its own directory.
FILESEXTRAPATHS:prepend := "${THISDIR}/files:${@os.path.dirname(d.getVar('VIGIL_RAUC_KEYRING') or '/nonexistent')}:"
RAUC_KEYRING_FILE = "${@os.path.basename(d.getVar('VIGIL_RAUC_KEYRING') or 'unset.pem')}"

SRC_URI:append:tegra = " file://rauc-tegra-bootloader.sh"

do_install:append() {
    sed -i -e 's,@MACHINE@,${MACHINE},g' -e 's,@KEYRING@,${sysconfdir}/rauc/${RAUC_KEYRING_FILE},g' \
        ${D}${sysconfdir}/rauc/system.conf
}

do_install:append:tegra() {
    install -d ${D}${libdir}/rauc
    install -m 0755 ${WORKDIR}/rauc-tegra-bootloader.sh ${D}${libdir}/rauc/tegra-bootloader
}

# The system.conf names the machine.
PACKAGE_ARCH = "${MACHINE_ARCH}"

FILES:${PN}:append:tegra = " ${libdir}/rauc"
RDEPENDS:${PN}:append:tegra = " tegra-redundant-boot-nvbootctrl"

# nooelint: oelint.task.noanonpython - a missing keyring must stop the build with this message
python __anonymous() {
    keyring = d.getVar('VIGIL_RAUC_KEYRING')
    if not keyring or not os.path.isabs(keyring):
        raise bb.parse.SkipRecipe("set VIGIL_RAUC_KEYRING to the absolute path of your RAUC CA certificate (yocto/README.md, RAUC)")
}
