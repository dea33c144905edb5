// SPDX-License-Identifier: GPL-2.0

//! The rig's named PCIe topologies and the QEMU command line for them.

use std::path::Path;

/// A named rig: where each accelerator sits and which CPU model the guest
/// sees (the kernel allows P2P through the host bridge only on AMD Zen and
/// later, or on whitelisted bridges).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    name: &'static str,
    cpu: &'static str,
}

/// The bridge each accelerator `cfx<i>` is plugged into.
const SWITCH3_RP1_SLOTS: [&str; 4] = ["dp0", "dp1", "dp2", "rp1"];

/// The bridges: a root port with a switch of three downstream ports, a
/// second root port, and a third one for the NVMe controller with a
/// controller memory buffer.
const SWITCH3_RP1_BRIDGES: [&str; 7] = [
    "pcie-root-port,id=rp0,chassis=1,slot=0",
    "x3130-upstream,id=up0,bus=rp0",
    "xio3130-downstream,id=dp0,bus=up0,chassis=2,slot=0",
    "xio3130-downstream,id=dp1,bus=up0,chassis=3,slot=1",
    "xio3130-downstream,id=dp2,bus=up0,chassis=4,slot=2",
    "pcie-root-port,id=rp1,chassis=5,slot=1",
    "pcie-root-port,id=rp2,chassis=6,slot=2",
];

/// The emulated NVMe controllers: `nvme0` (serial `cfxnvme0`), function 1
/// beside `cfx2` behind the switch, and `nvme1` (serial `cfxnvme1`) on the
/// third root port with a 64 MiB controller memory buffer, which the kernel
/// publishes as peer-to-peer memory of its own. Each has one namespace, the
/// raw file `dir/nvme<i>.img` of [`NVME_SIZE`] bytes.
const NVME: [(&str, &str); 2] = [("dp2,addr=00.1", ""), ("rp2", ",cmb_size_mb=64")];

/// Size of each NVMe controller's namespace.
pub const NVME_SIZE: u64 = 64 << 20;

/// The NVMe namespaces' files in the run directory.
pub fn nvme_files() -> [String; 2] {
    [0, 1].map(|i| format!("nvme{i}.img"))
}

/// The file in the run directory behind the plain ivshmem function's BAR2.
pub const PLAIN_FILE: &str = "plain-mem";

/// Size of the plain ivshmem function's BAR2.
pub const PLAIN_SIZE: u64 = 4 << 20;

impl Topology {
    /// The topology called `name`.
    pub fn by_name(name: &str) -> Result<Self, String> {
        match name {
            "switch3+rp1" => Ok(Self {
                name: "switch3+rp1",
                cpu: "qemu64",
            }),
            "switch3+rp1-zen" => Ok(Self {
                name: "switch3+rp1-zen",
                cpu: "EPYC",
            }),
            _ => Err(format!(
                "unknown topology {name:?}: switch3+rp1 and switch3+rp1-zen exist"
            )),
        }
    }

    /// Its name, as `conflux-emu --topology` takes it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How many accelerators it has.
    pub fn devices(&self) -> usize {
        SWITCH3_RP1_SLOTS.len()
    }

    /// QEMU's arguments for this rig, minus `-kernel` and `-initrd`: TCG,
    /// guest RAM shared through `dir/guest-ram`, QMP at `dir/qmp.sock`, the
    /// bridges, and accelerator `i` as `ivshmem-doorbell` `cfx<i>` on
    /// `dir/dev<i>.sock`. With `plain`, also a plain ivshmem function
    /// (`ivshmem-plain` `plain0`, the same PCI ID, no Conflux signature) on
    /// the root bus, which the driver must decline, and whose BAR2 is the
    /// zeroed file `dir/`[`PLAIN_FILE`], which the device model shares.
    pub fn qemu_args(&self, dir: &Path, mem: u64, append: &[String], plain: bool) -> Vec<String> {
        let d = dir.display();
        let mut cmdline = String::from("console=ttyS0 panic=-1 oops=panic");
        for a in append {
            cmdline.push(' ');
            cmdline.push_str(a);
        }
        let mut a: Vec<String> = [
            "-accel",
            "tcg",
            "-machine",
            "q35,memory-backend=ram",
            "-cpu",
            self.cpu,
            "-smp",
            "1",
            "-m",
            &format!("{}M", mem >> 20),
            "-object",
            &format!("memory-backend-file,id=ram,size={mem},mem-path={d}/guest-ram,share=on"),
            "-append",
            &cmdline,
            "-display",
            "none",
            "-vga",
            "none",
            "-net",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-qmp",
            &format!("unix:{d}/qmp.sock,server=on,wait=off"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for b in SWITCH3_RP1_BRIDGES {
            a.extend(["-device".into(), b.into()]);
        }
        for (i, bus) in SWITCH3_RP1_SLOTS.iter().enumerate() {
            // `cfx2` shares its slot with `nvme0`.
            let slot = if *bus == "dp2" {
                ",addr=00.0,multifunction=on"
            } else {
                ""
            };
            a.extend([
                "-chardev".into(),
                format!("socket,id=c{i},path={d}/dev{i}.sock"),
                "-device".into(),
                format!("ivshmem-doorbell,chardev=c{i},vectors=2,id=cfx{i},bus={bus}{slot}"),
            ]);
        }
        for (i, ((at, extra), file)) in NVME.iter().zip(nvme_files()).enumerate() {
            a.extend([
                "-drive".into(),
                format!("file={d}/{file},if=none,id=nvd{i},format=raw"),
                "-device".into(),
                format!("nvme,serial=cfxnvme{i},drive=nvd{i},id=nvme{i},bus={at}{extra}"),
            ]);
        }
        if plain {
            a.extend([
                "-object".into(),
                format!(
                    "memory-backend-file,id=plainmem,size={PLAIN_SIZE},\
                     mem-path={d}/{PLAIN_FILE},share=on"
                ),
                "-device".into(),
                "ivshmem-plain,memdev=plainmem,id=plain0,bus=pcie.0".into(),
            ]);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            Topology::by_name("switch3+rp1").map(|t| t.cpu),
            Ok("qemu64")
        );
        assert_eq!(
            Topology::by_name("switch3+rp1-zen").map(|t| t.cpu),
            Ok("EPYC")
        );
        assert!(Topology::by_name("switch4").is_err());
    }

    #[test]
    fn devices_on_their_bridges() -> Result<(), String> {
        let a = Topology::by_name("switch3+rp1")?.qemu_args(
            Path::new("/r"),
            512 << 20,
            &["kunit.enable=1".into()],
            false,
        );
        let joined = a.join(" ");
        for (i, bus) in ["dp0", "dp1", "dp2", "rp1"].iter().enumerate() {
            let dev = format!("ivshmem-doorbell,chardev=c{i},vectors=2,id=cfx{i},bus={bus}");
            assert!(joined.contains(&dev), "{dev}");
            let shared = joined.contains(&format!("{dev},addr=00.0,multifunction=on"));
            assert_eq!(shared, *bus == "dp2", "{dev}");
            assert!(joined.contains(&format!("path=/r/dev{i}.sock")));
        }
        assert!(joined.contains("size=536870912,mem-path=/r/guest-ram,share=on"));
        assert!(joined.contains("-m 512M"));
        let cmdline = a
            .iter()
            .position(|s| s == "-append")
            .map(|i| a[i + 1].as_str());
        assert_eq!(
            cmdline,
            Some("console=ttyS0 panic=-1 oops=panic kunit.enable=1")
        );
        assert!(!joined.contains("ivshmem-plain"));
        assert!(joined.contains(
            "-drive file=/r/nvme0.img,if=none,id=nvd0,format=raw \
             -device nvme,serial=cfxnvme0,drive=nvd0,id=nvme0,bus=dp2,addr=00.1"
        ));
        assert!(joined.contains(
            "-drive file=/r/nvme1.img,if=none,id=nvd1,format=raw \
             -device nvme,serial=cfxnvme1,drive=nvd1,id=nvme1,bus=rp2,cmb_size_mb=64"
        ));
        assert!(joined.contains("pcie-root-port,id=rp2,chassis=6,slot=2"));
        Ok(())
    }

    #[test]
    fn plain_ivshmem_function() -> Result<(), String> {
        let a = Topology::by_name("switch3+rp1")?.qemu_args(Path::new("/r"), 512 << 20, &[], true);
        let joined = a.join(" ");
        assert!(joined.contains(
            "-object memory-backend-file,id=plainmem,size=4194304,mem-path=/r/plain-mem,share=on"
        ));
        assert!(joined.contains("-device ivshmem-plain,memdev=plainmem,id=plain0,bus=pcie.0"));
        assert_eq!(joined.matches("ivshmem-doorbell").count(), 4);
        Ok(())
    }
}
