SUMMARY = "The data partition at /data, and Vigil's state on it"
DESCRIPTION = "Mounts the partition labelled VIGIL_DATA_PARTLABEL at /data and binds \
               /data/private over /var/lib/private, where systemd keeps the state of \
               DynamicUser= services (Vigil's /var/lib/vigil): the root is read-only."
SECTION = "base"
LICENSE = "Apache-2.0"
# nooelint: oelint.var.licenseremotefile - the unit files are this layer's own (the repository's licence)
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SRC_URI = "file://data.mount \
           file://var-lib-private.mount \
           file://vigil-data.conf \
           file://vigil-data-state.conf \
           "

S = "${WORKDIR}"

# qemux86-64: the wks file's partition "data". Jetson: NVIDIA's flash layouts end with the user
# data partition UDA (sized by the layout; untested here).
VIGIL_DATA_PARTLABEL ??= "data"
VIGIL_DATA_PARTLABEL:tegra ??= "UDA"

inherit allarch systemd

SYSTEMD_SERVICE:${PN} = "data.mount var-lib-private.mount"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${systemd_system_unitdir} ${D}/data
    sed -e 's,@PARTLABEL@,${VIGIL_DATA_PARTLABEL},g' ${S}/data.mount > ${D}${systemd_system_unitdir}/data.mount
    chmod 0644 ${D}${systemd_system_unitdir}/data.mount
    install -m 0644 ${S}/var-lib-private.mount ${D}${systemd_system_unitdir}/
    install -d ${D}${nonarch_libdir}/tmpfiles.d ${D}${systemd_system_unitdir}/vigil.service.d
    install -m 0644 ${S}/vigil-data.conf ${D}${nonarch_libdir}/tmpfiles.d/
    install -m 0644 ${S}/vigil-data-state.conf ${D}${systemd_system_unitdir}/vigil.service.d/data.conf
}

PACKAGE_ARCH = "${MACHINE_ARCH}"
FILES:${PN} += "/data ${nonarch_libdir}/tmpfiles.d ${systemd_system_unitdir}/vigil.service.d"
