SUMMARY = "ONNX Runtime shared library for Vigil (official PyPI wheel, CPU provider)"
DESCRIPTION = "libonnxruntime.so from Microsoft's onnxruntime wheel on PyPI, the same version \
               and wheel `cargo xtask setup` uses (xtask/src/assets.rs, ORT_VERSION), installed \
               where vigil.service's ORT_DYLIB_PATH points: /usr/lib/vigil/libonnxruntime.so.1."
HOMEPAGE = "https://onnxruntime.ai"
SECTION = "libs"
CVE_PRODUCT = "microsoft:onnxruntime"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://onnxruntime/LICENSE;md5=0f7e3b1308cb5c00b372a6e78835732d"

# The wheels are zip files: downloadfilename gives them a .zip name so that do_unpack unzips them.
# The wheel for CPython 3.11 is taken only for its library (which does not use Python).
PYPI_FILES = "https://files.pythonhosted.org/packages"
SRC_URI:x86-64 = "${PYPI_FILES}/1d/46/e6f356c9539d2eed44126de3421a81e217da2ad91b22dc11b379cb1e384f/onnxruntime-${PV}-cp311-cp311-manylinux_2_28_x86_64.whl;downloadfilename=onnxruntime-${PV}-manylinux_2_28_x86_64.zip;subdir=wheel"
SRC_URI[sha256sum] = "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d"
SRC_URI:aarch64 = "${PYPI_FILES}/b7/30/103820b32e9dc1d1fcfc5b519fd2de5bd699d25a25895caf5d726350d1b5/onnxruntime-${PV}-cp311-cp311-manylinux_2_28_aarch64.whl;downloadfilename=onnxruntime-${PV}-manylinux_2_28_aarch64.zip;subdir=wheel"
SRC_URI[sha256sum]:aarch64 = "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c"

# Only these two architectures have a wheel.
COMPATIBLE_HOST = "(x86_64|aarch64).*-linux"

S = "${WORKDIR}/wheel"

# A prebuilt binary: nothing to configure or compile.
do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${libdir}/vigil
    install -m 0755 ${S}/onnxruntime/capi/libonnxruntime.so.${PV} ${D}${libdir}/vigil/
    ln -s libonnxruntime.so.${PV} ${D}${libdir}/vigil/libonnxruntime.so.1
}

FILES:${PN} += "${libdir}/vigil"

# Microsoft's release is stripped already and was linked by its own build flags.
INHIBIT_PACKAGE_STRIP = "1"
INHIBIT_PACKAGE_DEBUG_SPLIT = "1"
# nooelint: oelint.vars.insaneskip - a prebuilt, already stripped library: there is nothing to strip
INSANE_SKIP:${PN} = "already-stripped"

# This CPU build has no CUDA or TensorRT provider. On a Jetson, Vigil's `auto` backend then runs
# the model on the CPU and says why; for the TensorRT provider, replace this recipe with an ONNX
# Runtime built for JetPack 6 (yocto/README.md).
