// SPDX-License-Identifier: GPL-2.0

//! Generates the uAPI structures and constants from `include/uapi/drm/conflux_accel.h` with
//! bindgen, so that the library and the kernel cannot drift apart.
//!
//! `BINDGEN` names the bindgen executable (default `bindgen`). `CONFLUX_UAPI_INCLUDE` is a
//! directory of sanitised kernel headers, as `make headers` writes them to `usr/include` of its
//! build directory (default: `~/.cache/conflux/build/uapi/usr/include`, which the build steps
//! prepare).

use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("uapi.rs");
    let header = manifest.join("../../../../../include/uapi/drm/conflux_accel.h");
    let include = env::var_os("CONFLUX_UAPI_INCLUDE")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = env::var_os("CONFLUX_CACHE")
                .map(PathBuf::from)
                .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/conflux")))?;
            Some(cache.join("build/uapi/usr/include"))
        })
        .expect("set CONFLUX_UAPI_INCLUDE to the usr/include of `make headers`");
    if !include.join("drm/drm.h").is_file() {
        panic!(
            "{}: no drm/drm.h; run `make guest` or set CONFLUX_UAPI_INCLUDE to the usr/include of `make headers`",
            include.display()
        );
    }
    let bindgen = env::var("BINDGEN").unwrap_or_else(|_| "bindgen".into());
    let status = Command::new(&bindgen)
        .arg(&header)
        .args([
            "--no-prepend-enum-name",
            "--allowlist-item",
            "(drm_)?conflux.*|DRM_CONFLUX_.*|DRM_IOCTL_CONFLUX_.*|drm_gem_close|drm_prime_handle|drm_syncobj_(create|destroy|handle|wait|timeline_wait)|DRM_SYNCOBJ_.*|drm_version",
            "--with-derive-default",
            "-o",
        ])
        .arg(&out)
        .arg("--")
        // The header includes "drm.h", which lives beside it.
        .arg("-I")
        .arg(include.join("drm"))
        .arg("-I")
        .arg(&include)
        .status()
        .unwrap_or_else(|e| panic!("running {bindgen}: {e} (run `make setup`, which installs it)"));
    if !status.success() {
        panic!("{bindgen} {}: {status}", header.display());
    }
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-env-changed=CONFLUX_UAPI_INCLUDE");
    println!("cargo:rerun-if-env-changed=BINDGEN");
}
