// SPDX-License-Identifier: GPL-2.0

//! The PCIe fabric: root ports, switches, devices and system memory, and the
//! routing decision for a device's access to a bus address.
//!
//! Peer-to-peer routing follows the kernel's `pci_p2pdma_distance()`: two
//! devices below a common upstream bridge reach each other directly; devices
//! that only meet at the root complex reach each other only when the host
//! bridge allows peer-to-peer traffic.

use conflux_device::{
    fault::{Cause, ConfigError, Fault},
    memory::Target,
    overlaps,
    regs::{Layout, VRAM_OFFSET},
};

/// The BAR2 of a device on the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Bus address, aligned to the size.
    pub base: u64,
    /// Size: a power of two accepted by [`Layout::new`].
    pub size: u64,
}

/// A range of system memory on the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// Bus address of the first byte.
    pub bus: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset of the first byte in [`Target::System`].
    pub offset: u64,
}

/// A port a switch or device can be plugged into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port(usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    RootPort,
    SwitchUpstream,
    SwitchDownstream,
    /// A bridge whose secondary bus takes any number of children.
    Bridge,
    Device,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Node {
    kind: Kind,
    parent: Option<usize>,
}

/// How two devices reach each other, named after the kernel's
/// `enum pci_p2pdma_map_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2p {
    /// Below a common upstream bridge; `distance` counts the links from
    /// each device up to that bridge (4 for two devices on one switch).
    BusAddr {
        /// Number of hops through the common bridge.
        distance: u32,
    },
    /// Through the root complex, which allows it.
    ThruHostBridge,
    /// Through the root complex, which does not allow it.
    NotSupported,
}

/// Which counter an access is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The device's own VRAM.
    Local,
    /// Another device's VRAM.
    Peer,
    /// System memory.
    System,
}

/// Where an access goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The memory accessed.
    pub target: Target,
    /// Offset in that memory.
    pub offset: u64,
    /// Which counter the bytes are charged to.
    pub path: Path,
}

/// Names of the topologies [`Topology::rig`] builds.
pub const RIGS: [&str; 2] = ["switch3+rp1", "switch3+rp1-zen"];

/// A PCIe topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    nodes: Vec<Node>,
    devices: Vec<(usize, Bar)>,
    /// Functions that are not Conflux devices and whose whole BAR is memory
    /// (plain ivshmem functions): peers the devices can copy to and from.
    plain: Vec<(usize, Bar)>,
    ram: Vec<RamRange>,
    host_bridge_p2p: bool,
}

impl Topology {
    /// An empty topology; `host_bridge_p2p` says whether the host bridge
    /// routes peer-to-peer traffic between root ports (as on AMD Zen).
    pub fn new(host_bridge_p2p: bool) -> Self {
        Self {
            nodes: Vec::new(),
            devices: Vec::new(),
            plain: Vec::new(),
            ram: Vec::new(),
            host_bridge_p2p,
        }
    }

    /// One of the named rig topologies ([`RIGS`]) with the BAR2 of devices
    /// 0 to 3 and the system memory ranges:
    ///
    /// - `switch3+rp1`: devices 0, 1 and 2 below one switch behind root
    ///   port 0, device 3 on root port 1; the host bridge forbids P2P;
    /// - `switch3+rp1-zen`: the same, the host bridge allows P2P.
    pub fn rig(name: &str, bars: &[Bar], ram: &[RamRange]) -> Result<Self, ConfigError> {
        let host_bridge_p2p = match name {
            "switch3+rp1" => false,
            "switch3+rp1-zen" => true,
            _ => {
                return Err(ConfigError(format!(
                    "unknown topology {name:?}, known: {}",
                    RIGS.join(", ")
                )))
            }
        };
        let [b0, b1, b2, b3] = *bars else {
            return Err(ConfigError(format!(
                "topology {name} has 4 devices, {} BARs given",
                bars.len()
            )));
        };
        let mut t = Self::new(host_bridge_p2p);
        let rp0 = t.add_root_port();
        let rp1 = t.add_root_port();
        let down = t.add_switch(rp0, 3)?;
        for (port, bar) in down.into_iter().zip([b0, b1, b2]).chain([(rp1, b3)]) {
            t.add_device(port, bar)?;
        }
        for r in ram {
            t.add_ram(*r)?;
        }
        Ok(t)
    }

    fn add_node(&mut self, kind: Kind, parent: Option<usize>) -> usize {
        self.nodes.push(Node { kind, parent });
        self.nodes.len() - 1
    }

    /// Takes a free root port or switch downstream port, or the secondary
    /// bus of a bridge, for a new child.
    fn plug(&self, port: Port) -> Result<usize, ConfigError> {
        match self.nodes.get(port.0).map(|n| n.kind) {
            Some(Kind::Bridge) => return Ok(port.0),
            Some(Kind::RootPort | Kind::SwitchDownstream) => {}
            _ => {
                return Err(ConfigError(format!(
                    "{port:?} is not a root or downstream port"
                )))
            }
        }
        if self.nodes.iter().any(|n| n.parent == Some(port.0)) {
            return Err(ConfigError(format!("{port:?} already has a link partner")));
        }
        Ok(port.0)
    }

    /// Takes the root bus (`None`) or a port as [`Topology::plug`] does.
    fn plug_at(&self, parent: Option<Port>) -> Result<Option<usize>, ConfigError> {
        parent.map(|p| self.plug(p)).transpose()
    }

    /// Adds a PCI-to-PCI bridge -- a root port, a switch port or a
    /// conventional bridge, as a bus walk finds them -- on the root bus
    /// (`parent` is `None`) or below `parent`. The returned port stands for
    /// its secondary bus, which takes any number of bridges and devices.
    pub fn add_bridge(&mut self, parent: Option<Port>) -> Result<Port, ConfigError> {
        let parent = self.plug_at(parent)?;
        Ok(Port(self.add_node(Kind::Bridge, parent)))
    }

    /// Adds a root port of the root complex.
    pub fn add_root_port(&mut self) -> Port {
        Port(self.add_node(Kind::RootPort, None))
    }

    /// Plugs a switch with `downstream` ports into `port`; returns its
    /// downstream ports.
    pub fn add_switch(&mut self, port: Port, downstream: usize) -> Result<Vec<Port>, ConfigError> {
        let up = self.add_node(Kind::SwitchUpstream, Some(self.plug(port)?));
        Ok((0..downstream)
            .map(|_| Port(self.add_node(Kind::SwitchDownstream, Some(up))))
            .collect())
    }

    /// Checks that `len` bytes at `base` are free on the bus.
    fn claim(&self, base: u64, len: u64) -> Result<(), ConfigError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(ConfigError(format!(
                "range of {len:#x} bytes at {base:#x} is empty or wraps"
            )));
        }
        let mut taken = self
            .devices
            .iter()
            .chain(&self.plain)
            .map(|(_, b)| (b.base, b.size))
            .chain(self.ram.iter().map(|r| (r.bus, r.len)));
        match taken.find(|&(b, l)| overlaps(base, len, b, l)) {
            Some((b, l)) => Err(ConfigError(format!(
                "range {base:#x}+{len:#x} overlaps {b:#x}+{l:#x} already on the bus"
            ))),
            None => Ok(()),
        }
    }

    /// Plugs a device with `bar` into `port`; returns the device's index.
    pub fn add_device(&mut self, port: Port, bar: Bar) -> Result<usize, ConfigError> {
        self.add_device_at(Some(port), bar)
    }

    /// Plugs a device with `bar` below `parent`, or on the root bus when
    /// `parent` is `None` (an integrated endpoint: it has no upstream bridge
    /// and reaches other devices only through the host bridge); returns the
    /// device's index.
    pub fn add_device_at(&mut self, parent: Option<Port>, bar: Bar) -> Result<usize, ConfigError> {
        Layout::new(bar.size)?;
        let node = self.add_function(parent, bar)?;
        self.devices.push((node, bar));
        Ok(self.devices.len() - 1)
    }

    /// Plugs a plain ivshmem function, whose whole BAR `bar` is memory,
    /// below `parent` (or on the root bus); returns its index among the
    /// plain functions ([`Target::Plain`]).
    pub fn add_plain_at(&mut self, parent: Option<Port>, bar: Bar) -> Result<usize, ConfigError> {
        let node = self.add_function(parent, bar)?;
        self.plain.push((node, bar));
        Ok(self.plain.len() - 1)
    }

    /// Adds the node of a function with a size-aligned `bar` that no other
    /// memory on the bus overlaps.
    fn add_function(&mut self, parent: Option<Port>, bar: Bar) -> Result<usize, ConfigError> {
        if bar.size == 0 || !bar.base.is_multiple_of(bar.size) {
            return Err(ConfigError(format!(
                "BAR at {:#x} is not aligned to its size {:#x}",
                bar.base, bar.size
            )));
        }
        self.claim(bar.base, bar.size)?;
        let parent = self.plug_at(parent)?;
        Ok(self.add_node(Kind::Device, parent))
    }

    /// Adds a range of system memory.
    pub fn add_ram(&mut self, r: RamRange) -> Result<(), ConfigError> {
        if r.offset.checked_add(r.len).is_none() {
            return Err(ConfigError(format!(
                "system memory offset {:#x} + {:#x} wraps",
                r.offset, r.len
            )));
        }
        self.claim(r.bus, r.len)?;
        self.ram.push(r);
        Ok(())
    }

    /// Number of devices.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// BAR2 of device `dev`.
    pub fn bar(&self, dev: usize) -> Option<Bar> {
        self.devices.get(dev).map(|&(_, b)| b)
    }

    /// The function of `node` itself, then every bridge up to its root port.
    fn upstream(&self, node: Option<usize>) -> Vec<usize> {
        let mut chain = Vec::new();
        let mut node = node;
        while let Some(n) = node {
            chain.push(n);
            node = self.nodes.get(n).and_then(|n| n.parent);
        }
        chain
    }

    /// How devices `a` and `b` reach each other.
    pub fn p2p(&self, a: usize, b: usize) -> P2p {
        let node = |d: usize| self.devices.get(d).map(|&(n, _)| n);
        self.p2p_nodes(node(a), node(b))
    }

    /// How the functions of nodes `a` and `b` reach each other.
    fn p2p_nodes(&self, a: Option<usize>, b: Option<usize>) -> P2p {
        let (up_a, up_b) = (self.upstream(a), self.upstream(b));
        let common = up_a
            .iter()
            .enumerate()
            .find_map(|(i, n)| Some((i, up_b.iter().position(|m| m == n)?)));
        match common {
            Some((i, j)) => P2p::BusAddr {
                distance: u32::try_from(i + j).unwrap_or(u32::MAX),
            },
            None if self.host_bridge_p2p => P2p::ThruHostBridge,
            None => P2p::NotSupported,
        }
    }

    /// Routes an access of `len` bytes by device `from` to bus address
    /// `addr`: system memory; the VRAM window of a device's BAR2 (local
    /// when it is `from`'s own BAR2); a [`Cause::PeerUnreachable`] fault for
    /// a peer that [`Topology::p2p`] does not let `from` reach; a
    /// [`Cause::Bus`] fault when the bytes do not all lie in one of these.
    pub fn route(&self, from: usize, addr: u64, len: u64) -> Result<Route, Fault> {
        let bus_error = |what: String| {
            Err(Fault::new(
                Cause::Bus,
                format!("bus address {addr:#x}+{len:#x} {what}"),
            ))
        };
        if let Some(r) = self.ram.iter().find(|r| overlaps(addr, 1, r.bus, r.len)) {
            if addr.saturating_add(len) > r.bus + r.len {
                return bus_error(format!(
                    "runs past the end of system memory at {:#x}",
                    r.bus + r.len
                ));
            }
            return Ok(Route {
                target: Target::System,
                offset: r.offset + (addr - r.bus),
                path: Path::System,
            });
        }
        let found = self
            .devices
            .iter()
            .enumerate()
            .find(|(_, (_, b))| overlaps(addr, 1, b.base, b.size));
        let Some((dev, &(_, bar))) = found else {
            return self.route_plain(from, addr, len);
        };
        let offset = addr - bar.base;
        if offset < VRAM_OFFSET || addr.saturating_add(len) > bar.base + bar.size {
            return bus_error(format!(
                "is not inside the VRAM window of device {dev}'s BAR2"
            ));
        }
        if dev == from {
            return Ok(Route {
                target: Target::Bar(dev),
                offset,
                path: Path::Local,
            });
        }
        if self.p2p(from, dev) == P2p::NotSupported {
            return Err(Fault::new(
                Cause::PeerUnreachable,
                format!(
                    "devices {from} and {dev} share no upstream bridge \
                     and the host bridge does not route peer-to-peer"
                ),
            ));
        }
        Ok(Route {
            target: Target::Bar(dev),
            offset,
            path: Path::Peer,
        })
    }

    /// [`Topology::route`] for an address that is neither system memory nor
    /// a device's BAR2: the BAR of a plain function, charged as peer-to-peer.
    fn route_plain(&self, from: usize, addr: u64, len: u64) -> Result<Route, Fault> {
        let found = self
            .plain
            .iter()
            .enumerate()
            .find(|(_, (_, b))| overlaps(addr, 1, b.base, b.size));
        let Some((k, &(node, bar))) = found else {
            return Err(Fault::new(
                Cause::Bus,
                format!("bus address {addr:#x}+{len:#x} decodes to no memory"),
            ));
        };
        if addr.saturating_add(len) > bar.base + bar.size {
            return Err(Fault::new(
                Cause::Bus,
                format!(
                    "bus address {addr:#x}+{len:#x} runs past the end of plain function {k}'s BAR"
                ),
            ));
        }
        let from_node = self.devices.get(from).map(|&(n, _)| n);
        if self.p2p_nodes(from_node, Some(node)) == P2p::NotSupported {
            return Err(Fault::new(
                Cause::PeerUnreachable,
                format!(
                    "device {from} and plain function {k} share no upstream bridge \
                     and the host bridge does not route peer-to-peer"
                ),
            ));
        }
        Ok(Route {
            target: Target::Plain(k),
            offset: addr - bar.base,
            path: Path::Peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// BAR2 addresses as QEMU assigned them in the rig (plus a fourth).
    pub(crate) fn rig_bars() -> [Bar; 4] {
        [0xf400_0000, 0xf000_0000, 0xf800_0000, 0xe000_0000].map(|base| Bar {
            base,
            size: 64 * MIB,
        })
    }

    pub(crate) const RAM: [RamRange; 2] = [
        RamRange {
            bus: 0,
            len: 0x8000_0000,
            offset: 0,
        },
        RamRange {
            bus: 0x1_0000_0000,
            len: 0x4000_0000,
            offset: 0x8000_0000,
        },
    ];

    fn rig(name: &str) -> Topology {
        Topology::rig(name, &rig_bars(), &RAM).unwrap()
    }

    fn vram(dev: usize) -> u64 {
        rig_bars()[dev].base + VRAM_OFFSET
    }

    #[test]
    fn distances_match_the_kernel() {
        for name in RIGS {
            let t = rig(name);
            for a in 0..3 {
                for b in 0..3 {
                    let distance = if a == b { 0 } else { 4 };
                    assert_eq!(t.p2p(a, b), P2p::BusAddr { distance });
                }
                let across = if name.ends_with("zen") {
                    P2p::ThruHostBridge
                } else {
                    P2p::NotSupported
                };
                assert_eq!(t.p2p(a, 3), across);
                assert_eq!(t.p2p(3, a), across);
            }
            assert_eq!(t.p2p(3, 3), P2p::BusAddr { distance: 0 });
        }
        // A device on a root port and one below a switch on the same port
        // cannot exist; a switch below a switch gives longer distances.
        let mut t = Topology::new(false);
        let rp = t.add_root_port();
        let d = t.add_switch(rp, 2).unwrap();
        let d2 = t.add_switch(d[0], 1).unwrap();
        let a = t
            .add_device(
                d2[0],
                Bar {
                    base: 0,
                    size: 4 * MIB,
                },
            )
            .unwrap();
        let b = t
            .add_device(
                d[1],
                Bar {
                    base: 4 * MIB,
                    size: 4 * MIB,
                },
            )
            .unwrap();
        assert_eq!(t.p2p(a, b), P2p::BusAddr { distance: 6 });
    }

    #[test]
    fn routes_in_switch3_rp1() {
        let t = rig("switch3+rp1");
        let ok = |from, addr, len| t.route(from, addr, len).unwrap();
        let err = |from, addr, len| t.route(from, addr, len).unwrap_err().cause;
        assert_eq!(
            ok(0, vram(1), 4096),
            Route {
                target: Target::Bar(1),
                offset: VRAM_OFFSET,
                path: Path::Peer
            }
        );
        assert_eq!(ok(2, vram(0) + 0x1234, 8).path, Path::Peer);
        assert_eq!(err(0, vram(3), 4096), Cause::PeerUnreachable);
        assert_eq!(err(3, vram(1) + 4096, 4096), Cause::PeerUnreachable);
        assert_eq!(
            ok(0, vram(0) + 4096, 4096),
            Route {
                target: Target::Bar(0),
                offset: VRAM_OFFSET + 4096,
                path: Path::Local
            }
        );
        assert_eq!(ok(3, vram(3), 64 * MIB - VRAM_OFFSET).path, Path::Local);
        assert_eq!(
            ok(1, 0x1000, 4096),
            Route {
                target: Target::System,
                offset: 0x1000,
                path: Path::System
            }
        );
        assert_eq!(
            ok(1, 0x1_0000_2000, 4096),
            Route {
                target: Target::System,
                offset: 0x8000_2000,
                path: Path::System
            }
        );
        assert_eq!(err(1, 0x7fff_f000, 0x2000), Cause::Bus);
        assert_eq!(err(1, 0x9000_0000, 1), Cause::Bus);
        assert_eq!(err(1, u64::MAX, 1), Cause::Bus);
        // Control block, ring and private region are not decoded.
        assert_eq!(err(1, rig_bars()[0].base, 8), Cause::Bus);
        assert_eq!(err(0, rig_bars()[0].base + 0x1000, 8), Cause::Bus);
        assert_eq!(err(3, vram(3) - 1, 2), Cause::Bus);
        // Past the end of a BAR.
        assert_eq!(err(0, vram(1) + 62 * MIB - 4096, 8192), Cause::Bus);
    }

    #[test]
    fn routes_in_switch3_rp1_zen() {
        let t = rig("switch3+rp1-zen");
        let f = t.route(0, vram(3), 4096).unwrap();
        assert_eq!(
            f,
            Route {
                target: Target::Bar(3),
                offset: VRAM_OFFSET,
                path: Path::Peer
            }
        );
        assert_eq!(t.route(3, vram(2) + 0x2000, 1).unwrap().path, Path::Peer);
        assert_eq!(t.route(3, 0x1000, 1).unwrap().path, Path::System);
    }

    #[test]
    fn plain_function_on_the_root_bus() {
        const BASE: u64 = 0xfe00_0000;
        for (name, reachable) in [("switch3+rp1", false), ("switch3+rp1-zen", true)] {
            let mut t = rig(name);
            let bar = Bar {
                base: BASE,
                size: 4 * MIB,
            };
            assert_eq!(t.add_plain_at(None, bar), Ok(0));
            for dev in 0..4 {
                let r = t.route(dev, BASE + 0x1000, 4096);
                if reachable {
                    assert_eq!(
                        r,
                        Ok(Route {
                            target: Target::Plain(0),
                            offset: 0x1000,
                            path: Path::Peer
                        })
                    );
                } else {
                    let f = r.unwrap_err();
                    assert_eq!(f.cause, Cause::PeerUnreachable);
                    assert!(f
                        .detail
                        .contains(&format!("device {dev} and plain function 0")));
                }
            }
            let f = t.route(0, BASE + 4 * MIB - 8, 16).unwrap_err();
            assert_eq!(f.cause, Cause::Bus, "{f}");
            assert!(t
                .add_plain_at(None, bar)
                .unwrap_err()
                .0
                .contains("overlaps"));
        }
        let mut t = rig("switch3+rp1");
        let odd = Bar {
            base: 0xfe10_0000,
            size: 4 * MIB,
        };
        assert!(t.add_plain_at(None, odd).unwrap_err().0.contains("aligned"));
    }

    #[test]
    fn unreachable_fault_names_both_devices() {
        let f = rig("switch3+rp1").route(1, vram(3), 1).unwrap_err();
        assert!(f.detail.contains("devices 1 and 3"), "{f}");
    }

    #[test]
    fn rig_arguments_are_checked() {
        let bars = rig_bars();
        assert!(Topology::rig("switch3", &bars, &RAM)
            .unwrap_err()
            .0
            .contains("switch3+rp1-zen"));
        assert!(Topology::rig("switch3+rp1", &bars[..3], &RAM).is_err());
        let mut b = bars;
        b[1].base = b[0].base;
        assert!(Topology::rig("switch3+rp1", &b, &RAM)
            .unwrap_err()
            .0
            .contains("overlaps"));
        b[1].base = 0x1_0000_0000;
        assert!(Topology::rig("switch3+rp1", &b, &RAM)
            .unwrap_err()
            .0
            .contains("overlaps"));
        b[1] = Bar {
            base: 0x2_0000_0000,
            size: 48 * MIB,
        };
        assert!(Topology::rig("switch3+rp1", &b, &RAM).is_err());
        b[1] = Bar {
            base: 0x2_0100_0000,
            size: 64 * MIB,
        };
        assert!(Topology::rig("switch3+rp1", &b, &RAM)
            .unwrap_err()
            .0
            .contains("aligned"));
        let bad_ram = [RamRange {
            bus: u64::MAX,
            len: 2,
            offset: 0,
        }];
        assert!(Topology::rig("switch3+rp1", &bars, &bad_ram).is_err());
    }

    #[test]
    fn generic_bridges_give_the_rig_decisions() {
        // The rig as a bus walk sees it: every port is a plain bridge.
        for name in RIGS {
            let zen = name.ends_with("-zen");
            let mut t = Topology::new(zen);
            let rp0 = t.add_bridge(None).unwrap();
            let up = t.add_bridge(Some(rp0)).unwrap();
            let downs: Vec<_> = (0..3).map(|_| t.add_bridge(Some(up)).unwrap()).collect();
            let rp1 = t.add_bridge(None).unwrap();
            let bars = rig_bars();
            for (port, bar) in downs.iter().chain([&rp1]).zip(bars) {
                t.add_device(*port, bar).unwrap();
            }
            for r in RAM {
                t.add_ram(r).unwrap();
            }
            let named = rig(name);
            for a in 0..4 {
                for b in 0..4 {
                    assert_eq!(t.p2p(a, b), named.p2p(a, b), "{name}: {a} <-> {b}");
                }
                assert_eq!(
                    t.route(a, vram(a ^ 1), 4096),
                    named.route(a, vram(a ^ 1), 4096)
                );
            }
        }
    }

    #[test]
    fn conventional_bridges_and_integrated_endpoints() {
        let bar = |i: u64| Bar {
            base: i * 4 * MIB,
            size: 4 * MIB,
        };
        let mut t = Topology::new(false);
        let br = t.add_bridge(None).unwrap();
        let a = t.add_device(br, bar(0)).unwrap();
        let b = t.add_device(br, bar(1)).unwrap();
        let below = t.add_bridge(Some(br)).unwrap();
        let c = t.add_device_at(Some(below), bar(2)).unwrap();
        let root = t.add_device_at(None, bar(3)).unwrap();
        let other = t.add_device_at(None, bar(4)).unwrap();
        assert_eq!(t.p2p(a, b), P2p::BusAddr { distance: 2 });
        assert_eq!(t.p2p(a, c), P2p::BusAddr { distance: 3 });
        assert_eq!(t.p2p(root, root), P2p::BusAddr { distance: 0 });
        assert_eq!(t.p2p(root, a), P2p::NotSupported);
        assert_eq!(t.p2p(root, other), P2p::NotSupported);
        // A root or downstream port still takes one link partner.
        let rp = t.add_root_port();
        t.add_bridge(Some(rp)).unwrap();
        assert!(t.add_bridge(Some(rp)).is_err());
        assert!(t.add_bridge(Some(Port(99))).is_err());
        let mut zen = Topology::new(true);
        let x = zen.add_device_at(None, bar(0)).unwrap();
        let y = zen.add_device_at(None, bar(1)).unwrap();
        assert_eq!(zen.p2p(x, y), P2p::ThruHostBridge);
    }

    #[test]
    fn ports_take_one_link_partner() {
        let mut t = Topology::new(false);
        let rp = t.add_root_port();
        let bar = |i: u64| Bar {
            base: i * 4 * MIB,
            size: 4 * MIB,
        };
        t.add_device(rp, bar(0)).unwrap();
        assert!(t
            .add_device(rp, bar(1))
            .unwrap_err()
            .0
            .contains("link partner"));
        assert!(t.add_switch(rp, 2).is_err());
        let rp2 = t.add_root_port();
        let down = t.add_switch(rp2, 2).unwrap();
        assert!(t
            .add_device(Port(down[0].0 - 1), bar(2))
            .unwrap_err()
            .0
            .contains("not a root or downstream"));
        assert!(t.add_device(Port(99), bar(2)).is_err());
        assert_eq!(t.add_device(down[1], bar(2)).unwrap(), 1);
        assert_eq!(t.devices(), 2);
        assert_eq!(t.bar(1), Some(bar(2)));
        assert_eq!(t.bar(2), None);
    }
}
