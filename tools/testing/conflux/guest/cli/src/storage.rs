// SPDX-License-Identifier: GPL-2.0

//! Storage and peer-to-peer memory: the rig's NVMe namespaces, the peer-to-peer memory a PCI
//! function publishes (`p2pmem/allocate` in sysfs), system memory that udmabuf exports, and
//! direct I/O between them.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::{FileExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{Error, Mapping};

/// An [`Error`] of `call` on `what`.
fn err(what: &str, call: &str, error: io::Error) -> Error {
    Error::new(Path::new(what), call, error)
}

/// The block device of the namespace of the NVMe controller with serial `serial`, once the
/// kernel has probed it (NVMe probes asynchronously; this waits up to 30 s).
pub fn nvme_namespace(serial: &str) -> Result<PathBuf, Error> {
    let dir = "/sys/class/nvme";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries.filter_map(|e| e.ok()).find_map(|e| {
                let ctrl = e.file_name().to_string_lossy().into_owned();
                let s = std::fs::read_to_string(e.path().join("serial")).ok()?;
                let ns = PathBuf::from(format!("/dev/{ctrl}n1"));
                (s.trim() == serial && ns.exists()).then_some(ns)
            })
        });
        if let Some(ns) = found {
            return Ok(ns);
        }
        if Instant::now() > deadline {
            let call = format!("find the namespace of NVMe serial {serial}");
            return Err(err(dir, &call, io::ErrorKind::NotFound.into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The PCI function of the NVMe controller of namespace `ns` (`/dev/nvme0n1`).
pub fn nvme_pci(ns: &Path) -> Result<String, Error> {
    let name = ns.file_name().unwrap_or_default().to_string_lossy();
    let link = format!("/sys/block/{name}/device/device");
    let target = std::fs::read_link(&link).map_err(|e| err(&link, "readlink", e))?;
    Ok(target
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned())
}

/// Opens `ns` for direct I/O.
pub fn open_direct(ns: &Path) -> Result<File, Error> {
    File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(ns)
        .map_err(|e| err(&ns.display().to_string(), "open (O_DIRECT)", e))
}

/// `len` bytes of the peer-to-peer memory of the PCI function `pci`, from its
/// `p2pmem/allocate`.
pub fn p2pmem(pci: &str, len: usize) -> Result<Mapping, Error> {
    let path = format!("/sys/bus/pci/devices/{pci}/p2pmem/allocate");
    let f = File::options()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| err(&path, "open", e))?;
    Mapping::of_fd(f.as_fd(), 0, len, &path)
}

/// Reads `p2pmem/<file>` (`size`, `available`, `published`) of the PCI function `pci`.
pub fn p2pmem_attr(pci: &str, file: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/bus/pci/devices/{pci}/p2pmem/{file}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `len` bytes of page-aligned system memory for direct I/O: a shared mapping of `/dev/zero`.
pub fn system_buffer(len: usize) -> Result<Mapping, Error> {
    let zero = File::options()
        .read(true)
        .write(true)
        .open("/dev/zero")
        .map_err(|e| err("/dev/zero", "open", e))?;
    Mapping::of_fd(zero.as_fd(), 0, len, "/dev/zero")
}

/// `pread()` of all of the mapping `m` from `offset` of `f`, opened for direct I/O.
pub fn read_into(f: &File, m: &Mapping, offset: u64) -> io::Result<()> {
    // SAFETY: `m` is a live mapping of `m.len()` bytes that the kernel writes, and nothing
    // reads while it does.
    let buf = unsafe { std::slice::from_raw_parts_mut(m.as_ptr(), m.len()) };
    f.read_exact_at(buf, offset)
}

/// `pwrite()` of all of the mapping `m` to `offset` of `f`, opened for direct I/O.
pub fn write_from(f: &File, m: &Mapping, offset: u64) -> io::Result<()> {
    // SAFETY: `m` is a live mapping of `m.len()` bytes.
    let buf = unsafe { std::slice::from_raw_parts(m.as_ptr(), m.len()) };
    f.write_all_at(buf, offset)
}

/// `struct udmabuf_create` of `include/uapi/linux/udmabuf.h`.
#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

/// `UDMABUF_CREATE`: `_IOW('u', 0x42, struct udmabuf_create)`.
const UDMABUF_CREATE: u64 = 1 << 30 | 24 << 16 | (b'u' as u64) << 8 | 0x42;

/// A dma-buf of `len` bytes of a sealed memfd, made by udmabuf: memory that a driver other
/// than Conflux exports. Returns the memfd and the dma-buf.
pub fn udmabuf(len: u64) -> std::io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let last = std::io::Error::last_os_error;
    // SAFETY: A valid NUL-terminated name; the descriptor returned is owned by the File.
    let memfd = unsafe { libc::memfd_create(c"conflux-udmabuf".as_ptr(), libc::MFD_ALLOW_SEALING) };
    if memfd < 0 {
        return Err(last());
    }
    // SAFETY: `memfd` was just opened and nothing else owns it.
    let memfd = unsafe { std::fs::File::from_raw_fd(memfd) };
    memfd.set_len(len)?;
    // SAFETY: Plain fcntl on a descriptor we own.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } < 0 {
        return Err(last());
    }
    let dev = std::fs::File::open("/dev/udmabuf")?;
    let mut args = UdmabufCreate {
        memfd: memfd.as_raw_fd() as u32,
        flags: 0x01, // UDMABUF_FLAGS_CLOEXEC
        offset: 0,
        size: len,
    };
    // SAFETY: `args` is the structure the request encodes.
    let fd = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            UDMABUF_CREATE as libc::Ioctl,
            std::ptr::from_mut(&mut args),
        )
    };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: udmabuf just gave us this descriptor.
    Ok((memfd, unsafe { std::fs::File::from_raw_fd(fd) }))
}
