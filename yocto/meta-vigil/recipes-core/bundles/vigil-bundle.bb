SUMMARY = "RAUC update bundle of vigil-image (the root file system slot)"
DESCRIPTION = "A verity bundle with vigil-image as the rootfs slot's image, for RAUC's A/B \
               update. Signed with RAUC_KEY_FILE and RAUC_CERT_FILE, which you set in \
               local.conf (kas: the environment): the key never lives in this layer."
SECTION = "core"
LICENSE = "Apache-2.0"

inherit bundle

RAUC_BUNDLE_COMPATIBLE = "vigil-${MACHINE}"
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}-${DATETIME}"
RAUC_BUNDLE_VERSION[vardepsexclude] = "DATETIME"
RAUC_BUNDLE_DESCRIPTION = "Vigil image for ${MACHINE}"
RAUC_BUNDLE_FORMAT = "verity"

RAUC_BUNDLE_SLOTS = "rootfs"
# nooelint: oelint.vars.mispell.unknown - RAUC_SLOT_<slot> is the bundle class's per-slot variable
RAUC_SLOT_rootfs = "vigil-image"
# nooelint: oelint.vars.mispell.unknown - the same variable's fstype flag
RAUC_SLOT_rootfs[fstype] = "ext4"

# nooelint: oelint.task.noanonpython - an unsigned bundle must stop the build with this message
python __anonymous() {
    for var in ('RAUC_KEY_FILE', 'RAUC_CERT_FILE'):
        if not d.getVar(var):
            raise bb.parse.SkipRecipe("set %s (your bundle signing key and certificate, outside this layer: yocto/README.md, RAUC)" % var)
}
