// SPDX-License-Identifier: GPL-2.0

//! A `newc` cpio archive writer: the guest's initramfs.

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

/// An initramfs being assembled in memory.
#[derive(Default)]
pub struct Initramfs {
    data: Vec<u8>,
    ino: u32,
}

impl Initramfs {
    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    /// Adds a regular file with `mode` permission bits.
    pub fn file(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.entry(name, 0o100_000 | mode, body);
    }

    /// Adds the host file `src` as `name`, keeping its permission bits.
    pub fn host_file(&mut self, name: &str, src: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let body = fs::read(src)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        let mode = fs::metadata(src)?.permissions().mode() & 0o7777;
        self.file(name, mode, &body);
        Ok(())
    }

    /// Adds the host directory tree `src` under `name` (files and directories).
    pub fn host_tree(&mut self, name: &str, src: &Path) -> io::Result<()> {
        self.dir(name);
        let mut entries = fs::read_dir(src)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let child = format!("{name}/{}", e.file_name().to_string_lossy());
            let ty = e.file_type()?;
            if ty.is_dir() {
                self.host_tree(&child, &e.path())?;
            } else if ty.is_file() {
                self.host_file(&child, &e.path())?;
            }
        }
        Ok(())
    }

    /// Writes the archive, with its trailer, to `path`.
    pub fn write(mut self, path: &Path) -> io::Result<()> {
        self.entry("TRAILER!!!", 0, &[]);
        let mut f = fs::File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        f.write_all(&self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut a = Initramfs::default();
        a.file("/init", 0o755, b"abc");
        let d = &a.data;
        assert_eq!(&d[..6], b"070701");
        // mode field (second), namesize (twelfth) and the name right after the header.
        assert_eq!(&d[14..22], b"000081ed");
        assert_eq!(&d[54..62], b"00000003");
        assert_eq!(&d[94..102], b"00000005");
        assert_eq!(&d[110..115], b"init\0");
        // Header + name are padded to 4 bytes, then the body.
        assert_eq!(&d[116..119], b"abc");
        assert_eq!(d.len() % 4, 0);
    }
}
