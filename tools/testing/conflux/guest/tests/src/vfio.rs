// SPDX-License-Identifier: GPL-2.0

//! vfio-pci's dma-buf of a plain ivshmem function's BAR, imported by every device.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
};

use conflux::{copy_cmd, map_op, uapi, Device, Error};

use crate::{
    common::{copy_at_va, counters, first_diff, io_err, pattern, MIB, VA},
    Tally,
};

/// `VFIO_*` ioctls of `include/uapi/linux/vfio.h`: `_IO(';', 100 + n)`.
const fn vfio_ioctl(n: u64) -> u64 {
    (b';' as u64) << 8 | (100 + n)
}
const VFIO_SET_IOMMU: u64 = vfio_ioctl(2);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_ioctl(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_ioctl(6);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_ioctl(8);
const VFIO_DEVICE_FEATURE: u64 = vfio_ioctl(17);
const VFIO_NOIOMMU_IOMMU: libc::c_ulong = 8;
const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
const VFIO_DEVICE_FEATURE_DMA_BUF: u32 = 11;
const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
const PCI_COMMAND: u64 = 4;
const PCI_COMMAND_MEMORY: u16 = 2;

/// `struct vfio_region_info`, without capabilities.
#[repr(C)]
#[derive(Default)]
struct VfioRegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

/// `struct vfio_device_feature` carrying a `struct vfio_device_feature_dma_buf` with one range.
#[repr(C)]
struct VfioDmaBufFeature {
    argsz: u32,
    flags: u32,
    region_index: u32,
    open_flags: u32,
    dma_buf_flags: u32,
    nr_ranges: u32,
    offset: u64,
    length: u64,
}

/// A plain ivshmem function (the same PCI ID as Conflux devices, which Conflux declines) bound
/// to vfio-pci in no-IOMMU mode, opened through its group. Dropping it closes the device, then
/// gives the function back to no driver.
struct VfioPlain {
    device: std::fs::File,
    _group: std::fs::File,
    _container: std::fs::File,
    bdf: Unbind,
}

/// The address of a function bound to vfio-pci, which dropping unbinds. vfio-pci's unbind
/// waits for the device's files to close: drop it last.
struct Unbind(String);

impl Drop for Unbind {
    fn drop(&mut self) {
        let bdf = &self.0;
        let _ = std::fs::write("/sys/bus/pci/drivers/vfio-pci/unbind", bdf);
        let _ = std::fs::write(format!("/sys/bus/pci/devices/{bdf}/driver_override"), "\n");
    }
}

/// `ioctl(fd, request, arg)`, its non-negative result or the error.
fn ioctl_arg<T>(fd: &impl AsRawFd, request: u64, arg: T) -> std::io::Result<i32> {
    // SAFETY: The caller passes the argument the request encodes (a pointer to its structure,
    // or an integer).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl VfioPlain {
    /// The first ivshmem function without a driver, bound to vfio-pci; `None` when there is
    /// none.
    fn bind() -> Result<Option<Self>, Error> {
        let mut bdf = None;
        for entry in std::fs::read_dir("/sys/bus/pci/devices")
            .map_err(io_err("/sys/bus/pci/devices", "read_dir"))?
            .flatten()
        {
            let p = entry.path();
            let id = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            if id("vendor").trim() == "0x1af4"
                && id("device").trim() == "0x1110"
                && !p.join("driver").exists()
            {
                bdf = Some(entry.file_name().to_string_lossy().into_owned());
                break;
            }
        }
        let Some(bdf) = bdf else {
            return Ok(None);
        };
        let write = |path: &str, value: &str| {
            std::fs::write(path, value).map_err(io_err(path, &format!("write {value:?}")))
        };
        write(
            "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode",
            "1",
        )?;
        write(
            &format!("/sys/bus/pci/devices/{bdf}/driver_override"),
            "vfio-pci",
        )?;
        write("/sys/bus/pci/drivers/vfio-pci/bind", &bdf)?;
        let bdf = Unbind(bdf);
        let link = format!("/sys/bus/pci/devices/{}/iommu_group", bdf.0);
        let group = std::fs::read_link(&link).map_err(io_err(&link, "readlink"))?;
        let group = format!(
            "/dev/vfio/noiommu-{}",
            group.file_name().unwrap_or_default().to_string_lossy()
        );
        let rw = |path: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io_err(path, "open"))
        };
        let container = rw("/dev/vfio/vfio")?;
        let group_file = rw(&group)?;
        let fd = container.as_raw_fd();
        ioctl_arg(&group_file, VFIO_GROUP_SET_CONTAINER, &fd as *const i32)
            .map_err(io_err(&group, "VFIO_GROUP_SET_CONTAINER"))?;
        ioctl_arg(&container, VFIO_SET_IOMMU, VFIO_NOIOMMU_IOMMU)
            .map_err(io_err("/dev/vfio/vfio", "VFIO_SET_IOMMU (no-IOMMU)"))?;
        let name = std::ffi::CString::new(bdf.0.clone()).unwrap_or_default();
        let fd = ioctl_arg(&group_file, VFIO_GROUP_GET_DEVICE_FD, name.as_ptr())
            .map_err(io_err(&group, "VFIO_GROUP_GET_DEVICE_FD"))?;
        // SAFETY: vfio just gave us this descriptor.
        let device = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Some(Self {
            device,
            _group: group_file,
            _container: container,
            bdf,
        }))
    }

    fn device(&self) -> &std::fs::File {
        &self.device
    }

    fn bdf(&self) -> &str {
        &self.bdf.0
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` of region `index`: its size and offset in the device file.
    fn region(&self, index: u32) -> Result<(u64, u64), Error> {
        let mut info = VfioRegionInfo {
            argsz: std::mem::size_of::<VfioRegionInfo>() as u32,
            index,
            ..Default::default()
        };
        ioctl_arg(
            self.device(),
            VFIO_DEVICE_GET_REGION_INFO,
            std::ptr::from_mut(&mut info),
        )
        .map_err(io_err(
            self.bdf(),
            &format!("VFIO_DEVICE_GET_REGION_INFO {index}"),
        ))?;
        Ok((info.size, info.offset))
    }

    /// Turns the function's memory decoding on or off (vfio-pci revokes its dma-bufs while it
    /// is off).
    fn set_memory(&self, on: bool) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let (_, config) = self.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let at = config + PCI_COMMAND;
        let mut cmd = [0u8; 2];
        let err = io_err(self.bdf(), "PCI_COMMAND through the config region");
        self.device().read_exact_at(&mut cmd, at).map_err(err)?;
        let mut v = u16::from_le_bytes(cmd) & !PCI_COMMAND_MEMORY;
        if on {
            v |= PCI_COMMAND_MEMORY;
        }
        let err = io_err(self.bdf(), "PCI_COMMAND through the config region");
        self.device()
            .write_all_at(&v.to_le_bytes(), at)
            .map_err(err)
    }

    /// Reads (`write` false) or writes BAR2 at `offset` through the BAR2 region.
    fn bar2(&self, offset: u64, buf: &mut [u8], write: bool) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let (_, at) = self.region(2)?;
        let r = if write {
            self.device().write_all_at(buf, at + offset)
        } else {
            self.device().read_exact_at(buf, at + offset)
        };
        r.map_err(io_err(self.bdf(), "BAR2 region access"))
    }

    /// A dma-buf of `len` bytes of BAR2 from `VFIO_DEVICE_FEATURE_DMA_BUF`.
    fn dma_buf(&self, len: u64) -> Result<std::fs::File, Error> {
        let mut f = VfioDmaBufFeature {
            argsz: std::mem::size_of::<VfioDmaBufFeature>() as u32,
            flags: VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF,
            region_index: 2,
            open_flags: (libc::O_RDWR | libc::O_CLOEXEC) as u32,
            dma_buf_flags: 0,
            nr_ranges: 1,
            offset: 0,
            length: len,
        };
        let fd = ioctl_arg(
            self.device(),
            VFIO_DEVICE_FEATURE,
            std::ptr::from_mut(&mut f),
        )
        .map_err(io_err(self.bdf(), "VFIO_DEVICE_FEATURE_DMA_BUF of BAR2"))?;
        // SAFETY: vfio just gave us this descriptor.
        Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    }
}

/// Imports a dma-buf that vfio-pci exports for a plain ivshmem function's BAR2 (peer-to-peer
/// memory that Conflux did not write) into every device, and copies to and from it where the
/// topology has a route; vfio-pci's revocation (memory decoding off) fails the jobs on it
/// until it is on again.
pub(crate) fn test_vfio(t: &mut Tally, paths: &[PathBuf]) -> Result<(), Error> {
    let Some(vfio) = VfioPlain::bind()? else {
        println!("# no plain ivshmem function without a driver: no vfio-pci dma-buf to import");
        return Ok(());
    };
    let name = format!("vfio-pci {}", vfio.bdf());
    let len = 4 * MIB;
    vfio.set_memory(true)?;
    let mut data = pattern(len as usize, 71);
    vfio.bar2(0, &mut data, true)?;
    let buf = vfio.dma_buf(len)?;
    let files = paths
        .iter()
        .map(Device::open)
        .collect::<Result<Vec<_>, _>>()?;
    let mut reached = Vec::new();
    for (i, dev) in files.iter().enumerate() {
        let dn = dev.path().display();
        let imported = dev.import(buf.as_fd())?.into_handle();
        let info = dev.bo_info(imported)?;
        let vram = dev.bo_create(len)?.into_handle();
        let bind = dev.vm_bind(&[
            map_op(imported, 0, VA, len, false),
            map_op(vram, 0, 2 * VA, len, false),
        ]);
        let Ok(()) = bind else {
            let e = bind.unwrap_err();
            let left = dev.vm_path(0, VA);
            t.check(
                &format!("{dn}: a bind of {name}'s BAR2 without a route fails and maps nothing"),
                e.errno() == Some(libc::EINVAL) && matches!(left, Ok(0)),
                format!("{e}; path at the VA afterwards: {left:?}"),
            );
            continue;
        };
        let moved = copy_at_va(dev, len)?;
        let mut got = vec![0; len as usize];
        dev.read(vram, 0, &mut got)?;
        t.check(
            &format!("{dn}: copies {name}'s BAR2 into VRAM over P2P"),
            info.path == uapi::DRM_CONFLUX_PATH_EXTERNAL
                && got == data
                && moved[1] == len
                && moved[2] == 0,
            format!(
                "path {}; first difference {:?}; P2P +{}, system memory +{} bytes",
                conflux::path_name(info.path),
                first_diff(&got, &data),
                moved[1],
                moved[2]
            ),
        );
        let back = pattern(len as usize, 72 + i as u8);
        dev.write(vram, 0, &back)?;
        let c0 = counters(dev)?;
        let job = dev.submit(&[copy_cmd(2 * VA, VA, len)], 0, 0)?;
        dev.wait(job, -1)?;
        let c1 = counters(dev)?;
        let mut seen = vec![0; len as usize];
        vfio.bar2(0, &mut seen, false)?;
        t.check(
            &format!("{dn}: copies VRAM into {name}'s BAR2 over P2P"),
            seen == back && c1[1] - c0[1] == len,
            format!(
                "first difference {:?}; P2P +{} bytes",
                first_diff(&seen, &back),
                c1[1] - c0[1]
            ),
        );
        data = back;
        reached.push((dev, vram));
    }

    // vfio-pci revokes its dma-bufs while the function's memory decoding is off.
    if let Some(&(dev, vram)) = reached.first() {
        let dn = dev.path().display();
        vfio.set_memory(false)?;
        let r = dev
            .submit(&[copy_cmd(VA, 2 * VA, len)], 0, 0)
            .and_then(|job| dev.wait(job, -1).map(|_| job));
        t.check(
            &format!("{dn}: no job reaches {name}'s BAR2 while vfio-pci revokes it"),
            r.as_ref().err().and_then(Error::errno) == Some(libc::ENODEV),
            match r {
                Ok(job) => format!("job {job} completed"),
                Err(e) => e.to_string(),
            },
        );
        vfio.set_memory(true)?;
        let moved = copy_at_va(dev, len)?;
        let mut got = vec![0; len as usize];
        dev.read(vram, 0, &mut got)?;
        t.check(
            &format!("{dn}: jobs reach {name}'s BAR2 again once vfio-pci allows it"),
            got == data && moved[1] == len,
            format!(
                "first difference {:?}; P2P +{} bytes",
                first_diff(&got, &data),
                moved[1]
            ),
        );
    }
    Ok(())
}
