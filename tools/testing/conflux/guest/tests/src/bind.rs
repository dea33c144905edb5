// SPDX-License-Identifier: GPL-2.0

//! VM_BIND: page sizes, splits, the transaction rules and every bad input.

use conflux::{map_op, null_op, uapi, unmap_op, BindOp, Device, Error};

use crate::{
    common::{entries, KIB4, MIB, MIB2, VA},
    Tally,
};

/// VM_BIND: page sizes, splits, the transaction rules and every bad input.
pub(crate) fn test_bind(t: &mut Tally, dev: &Device) -> Result<(), Error> {
    let name = dev.path().display().to_string();
    let a = dev.bo_create(4 * MIB)?;
    let b = dev.bo_create(MIB2)?;
    let small = dev.bo_create(64 * 1024)?;
    let check = |t: &mut Tally, what: &str, want: (u64, u64, u64)| -> Result<(), Error> {
        let got = entries(dev)?;
        t.check(
            &format!("{name}: {what}"),
            got == want,
            format!("2 MiB entries, 4 KiB entries, spares {got:?}, expected {want:?}"),
        );
        Ok(())
    };
    dev.vm_bind(&[map_op(a.handle, 0, VA, 4 * MIB, false)])?;
    check(
        t,
        "4 MiB at a 2 MiB aligned VA: two 2 MiB entries, a spare table each",
        (2, 0, 2),
    )?;
    dev.vm_bind(&[unmap_op(VA + MIB, KIB4)])?;
    check(
        t,
        "unmapping 4 KiB in the middle splits one 2 MiB entry",
        (1, 511, 1),
    )?;
    dev.vm_bind(&[map_op(small.handle, 0, VA + MIB, KIB4, false)])?;
    check(t, "the hole takes a new 4 KiB mapping", (1, 512, 1))?;
    dev.vm_bind(&[unmap_op(VA, 4 * MIB)])?;
    check(t, "unmapping everything", (0, 0, 0))?;
    dev.vm_bind(&[map_op(a.handle, 0, VA + KIB4, 4 * MIB, false)])?;
    check(
        t,
        "4 MiB at a VA that is not 2 MiB aligned: 4 KiB entries",
        (0, 1024, 0),
    )?;
    dev.vm_bind(&[unmap_op(VA, 8 * MIB)])?;
    dev.vm_bind(&[map_op(a.handle, MIB2, VA, MIB2, true)])?;
    check(t, "the second half of a buffer at a 2 MiB VA", (1, 0, 1))?;
    // A map over a mapping replaces the part it covers.
    dev.vm_bind(&[map_op(small.handle, 0, VA + MIB, KIB4, false)])?;
    check(
        t,
        "a 4 KiB map inside a 2 MiB mapping splits it and replaces one page",
        (0, 512, 0),
    )?;
    let path = |va: u64| dev.vm_path(0, va);
    t.check(
        &format!("{name}: VM_PATH of the replaced page and its neighbours"),
        path(VA + MIB)? == uapi::DRM_CONFLUX_PATH_LOCAL
            && path(VA + MIB - KIB4)? == uapi::DRM_CONFLUX_PATH_LOCAL,
        "local",
    );
    dev.vm_bind(&[map_op(a.handle, MIB2, VA, MIB2, true)])?;
    check(
        t,
        "mapping the whole range again makes it one 2 MiB entry",
        (1, 0, 1),
    )?;
    dev.vm_bind(&[
        map_op(b.handle, 0, 3 * VA, MIB2, false),
        map_op(small.handle, 0, 3 * VA + KIB4, KIB4, false),
    ])?;
    check(
        t,
        "a call whose second map lands inside its first",
        (1, 512, 1),
    )?;
    dev.vm_bind(&[unmap_op(3 * VA, MIB2)])?;
    // NULL pages: entries like any mapping, replaced and split like them.
    dev.vm_bind(&[null_op(4 * VA, 4 * MIB)])?;
    check(t, "4 MiB of NULL pages: two 2 MiB entries", (3, 0, 3))?;
    t.check(
        &format!("{name}: VM_PATH of NULL pages"),
        path(4 * VA + MIB)? == uapi::DRM_CONFLUX_PATH_NULL,
        conflux::path_name(path(4 * VA + MIB)?),
    );
    dev.vm_bind(&[map_op(small.handle, 0, 4 * VA + KIB4, KIB4, false)])?;
    check(
        t,
        "a page mapped over NULL pages splits their entry",
        (2, 512, 2),
    )?;
    dev.vm_bind(&[null_op(4 * VA + KIB4, KIB4), unmap_op(4 * VA + MIB2, MIB2)])?;
    check(
        t,
        "NULL again over that page, and half unmapped",
        (1, 512, 1),
    )?;
    dev.vm_bind(&[unmap_op(4 * VA, 4 * MIB)])?;
    check(t, "after unmapping the NULL pages", (1, 0, 1))?;
    dev.vm_bind(&[unmap_op(0x40_0000_0000, MIB2)])?;
    t.check(
        &format!("{name}: VM_BIND unmap of a free range"),
        true,
        "succeeded",
    );
    // Bad input.
    let bad_ops: [(&str, BindOp, i32); 15] = [
        (
            "va not 4 KiB aligned",
            map_op(b.handle, 0, VA + 1, KIB4, false),
            libc::EINVAL,
        ),
        (
            "range not 4 KiB aligned",
            map_op(b.handle, 0, 5 * VA, 100, false),
            libc::EINVAL,
        ),
        (
            "range 0",
            map_op(b.handle, 0, 5 * VA, 0, false),
            libc::EINVAL,
        ),
        (
            "bo_offset not aligned",
            map_op(b.handle, 8, 5 * VA, KIB4, false),
            libc::EINVAL,
        ),
        (
            "below the VA range",
            map_op(b.handle, 0, 0, KIB4, false),
            libc::EINVAL,
        ),
        (
            "beyond the VA range",
            map_op(b.handle, 0, 0xff80_0000_0000 - KIB4, MIB2, false),
            libc::EINVAL,
        ),
        (
            "va + range overflows",
            map_op(b.handle, 0, !0xfff_u64, MIB2, false),
            libc::EINVAL,
        ),
        (
            "bo_offset + range beyond the buffer",
            map_op(b.handle, KIB4, 5 * VA, MIB2, false),
            libc::EINVAL,
        ),
        (
            "bo_offset + range overflows",
            map_op(b.handle, !0xfff_u64, 5 * VA, MIB2, false),
            libc::EINVAL,
        ),
        (
            "unknown handle",
            map_op(0xdead, 0, 5 * VA, KIB4, false),
            libc::ENOENT,
        ),
        (
            "unknown op",
            BindOp {
                op: 7,
                ..map_op(b.handle, 0, 5 * VA, KIB4, false)
            },
            libc::EINVAL,
        ),
        (
            "NULL map with a handle",
            BindOp {
                handle: b.handle,
                ..null_op(5 * VA, KIB4)
            },
            libc::EINVAL,
        ),
        (
            "NULL map with a bo_offset",
            BindOp {
                bo_offset: KIB4,
                ..null_op(5 * VA, KIB4)
            },
            libc::EINVAL,
        ),
        (
            "NULL map that is read-only",
            BindOp {
                flags: uapi::DRM_CONFLUX_BIND_NULL | uapi::DRM_CONFLUX_BIND_READONLY,
                ..null_op(5 * VA, KIB4)
            },
            libc::EINVAL,
        ),
        (
            "unmap with a handle",
            BindOp {
                handle: b.handle,
                ..unmap_op(5 * VA, KIB4)
            },
            libc::EINVAL,
        ),
    ];
    for (what, op, errno) in bad_ops {
        t.errno(
            &format!("{name}: VM_BIND {what}"),
            dev.vm_bind(&[op]),
            errno,
        );
    }
    let op = map_op(b.handle, 0, 5 * VA, KIB4, false);
    for (what, mut args, errno) in [
        (
            "vm_id 1",
            uapi::drm_conflux_vm_bind {
                vm_id: 1,
                num_ops: 1,
                ops: &op as *const _ as u64,
                ..Default::default()
            },
            libc::ENOENT,
        ),
        (
            "num_ops 0",
            uapi::drm_conflux_vm_bind {
                num_ops: 0,
                ops: &op as *const _ as u64,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "num_ops 1025",
            uapi::drm_conflux_vm_bind {
                num_ops: 1025,
                ops: &op as *const _ as u64,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "flags 1",
            uapi::drm_conflux_vm_bind {
                num_ops: 1,
                ops: &op as *const _ as u64,
                flags: 1,
                ..Default::default()
            },
            libc::EINVAL,
        ),
        (
            "ops pointer not readable",
            uapi::drm_conflux_vm_bind {
                num_ops: 1,
                ops: 8,
                ..Default::default()
            },
            libc::EFAULT,
        ),
    ] {
        t.errno(
            &format!("{name}: VM_BIND {what}"),
            dev.vm_bind_raw(&mut args),
            errno,
        );
    }
    check(t, "after the bad calls, the VM is as before", (1, 0, 1))?;
    dev.vm_bind(&[unmap_op(VA, MIB2)])?;
    Ok(())
}
