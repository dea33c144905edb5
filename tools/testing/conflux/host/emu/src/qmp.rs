// SPDX-License-Identifier: GPL-2.0

//! The PCIe fabric as QEMU has built it, learned over QMP.
//!
//! [`query_pci`] asks QEMU's QMP socket for `query-pci`; [`Expected::topology`]
//! turns the reply into a [`Topology`]: every bridge of the bus tree becomes
//! a bridge of the fabric, and the `ivshmem-doorbell` devices named `cfx0`,
//! `cfx1`, ... become devices 0, 1, ... with their BAR2 as the guest
//! programmed it.

use std::{
    fmt,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use conflux_device::regs::{PCI_DEVICE_ID, PCI_VENDOR_ID};

use crate::fabric::{Bar, Port, RamRange, Topology};

/// Why no topology could be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// Not yet: QEMU is not listening, or the guest has not numbered the
    /// buses or assigned the BARs. Worth retrying later.
    NotReady(String),
    /// QEMU's answer contradicts the configuration, or is not QMP.
    Invalid(String),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotReady(s) => write!(f, "not ready: {s}"),
            Self::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for QueryError {}

/// What the fabric must hold, and how the host bridge behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Number of devices: `cfx0` to `cfx{devices - 1}`.
    pub devices: usize,
    /// Size of every device's BAR2.
    pub bar_size: u64,
    /// The host bridge routes peer-to-peer traffic between root ports.
    pub host_bridge_p2p: bool,
    /// System memory on the bus.
    pub ram: Vec<RamRange>,
    /// Number of plain ivshmem functions, `plain0` to `plain{plain - 1}`:
    /// BAR2 memory the devices can copy to and from.
    pub plain: usize,
}

/// A device found in the tree: where it is plugged and its BAR2.
struct Found {
    parent: Option<Port>,
    place: String,
    address: u64,
    size: u64,
}

fn invalid(s: String) -> QueryError {
    QueryError::Invalid(s)
}

/// An integer member of `v`; QMP prints `int` members as signed 64-bit
/// numbers, so all-ones addresses arrive as -1.
fn int(v: &Value, key: &str) -> Option<u64> {
    let m = v.get(key)?;
    m.as_u64().or_else(|| m.as_i64().map(|i| i as u64))
}

/// `bus:slot.function` of a device, for messages.
fn place(d: &Value) -> String {
    let n = |k| int(d, k).unwrap_or(0);
    format!("{:02x}:{:02x}.{:x}", n("bus"), n("slot"), n("function"))
}

impl Expected {
    /// The topology of a `query-pci` reply: `reply` is the value of its
    /// `return` member (a list of root buses), or the whole reply.
    pub fn topology(&self, reply: &Value) -> Result<Topology, QueryError> {
        let buses = reply
            .get("return")
            .unwrap_or(reply)
            .as_array()
            .ok_or_else(|| invalid("query-pci did not return a list of buses".into()))?;
        let mut t = Topology::new(self.host_bridge_p2p);
        let mut found: Vec<Option<Found>> = (0..self.devices + self.plain).map(|_| None).collect();
        for bus in buses {
            let devices = bus
                .get("devices")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("a bus of query-pci has no device list".into()))?;
            self.walk(&mut t, &mut found, devices, None)?;
        }
        for (i, f) in found.iter().enumerate() {
            let name = self.name(i);
            let f = f.as_ref().ok_or_else(|| {
                QueryError::NotReady(format!("no ivshmem function with id {name} on the bus yet"))
            })?;
            if f.address == 0 || f.address == u64::MAX {
                return Err(QueryError::NotReady(format!(
                    "BAR2 of {name} at {} is not assigned yet",
                    f.place
                )));
            }
            if i >= self.devices {
                let bar = Bar {
                    base: f.address,
                    size: f.size,
                };
                t.add_plain_at(f.parent, bar)
                    .map_err(|e| invalid(format!("{name} at {}: {e}", f.place)))?;
                continue;
            }
            if f.size != self.bar_size {
                return Err(invalid(format!(
                    "BAR2 of cfx{i} at {} has {:#x} bytes, the device model {:#x}",
                    f.place, f.size, self.bar_size
                )));
            }
            let bar = Bar {
                base: f.address,
                size: f.size,
            };
            t.add_device_at(f.parent, bar)
                .map_err(|e| invalid(format!("cfx{i} at {}: {e}", f.place)))?;
        }
        for r in &self.ram {
            t.add_ram(*r)
                .map_err(|e| invalid(format!("guest RAM: {e}")))?;
        }
        Ok(t)
    }

    /// The id of function `i` of `found`: `cfx{i}`, then `plain{k}`.
    fn name(&self, i: usize) -> String {
        match i.checked_sub(self.devices) {
            None => format!("cfx{i}"),
            Some(k) => format!("plain{k}"),
        }
    }

    /// Where `qdev_id` goes in `found`, if it is one of ours.
    fn index(&self, qdev_id: &str) -> Option<usize> {
        let number = |prefix: &str, count: usize| {
            qdev_id
                .strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&i| format!("{prefix}{i}") == qdev_id && i < count)
        };
        number("cfx", self.devices).or_else(|| Some(self.devices + number("plain", self.plain)?))
    }

    /// Adds the bridges of `devices` below `parent` and records ours.
    fn walk(
        &self,
        t: &mut Topology,
        found: &mut [Option<Found>],
        devices: &[Value],
        parent: Option<Port>,
    ) -> Result<(), QueryError> {
        for d in devices {
            if let Some(bridge) = d.get("pci_bridge").filter(|b| b.is_object()) {
                let port = t
                    .add_bridge(parent)
                    .map_err(|e| invalid(format!("bridge at {}: {e}", place(d))))?;
                // QEMU lists the devices behind a bridge in
                // `pci_bridge.devices`, and only once the guest has given
                // the bridge a secondary bus number.
                let below = bridge
                    .get("devices")
                    .or_else(|| bridge.get("bus").and_then(|b| b.get("devices")))
                    .and_then(Value::as_array);
                if let Some(below) = below {
                    self.walk(t, found, below, Some(port))?;
                }
                continue;
            }
            let id = d.get("id");
            let vendor = id.and_then(|i| int(i, "vendor"));
            let device = id.and_then(|i| int(i, "device"));
            if vendor != Some(PCI_VENDOR_ID.into()) || device != Some(PCI_DEVICE_ID.into()) {
                continue;
            }
            let qdev_id = d.get("qdev_id").and_then(Value::as_str).unwrap_or("");
            let Some(i) = self.index(qdev_id) else {
                continue;
            };
            let (name, here) = (self.name(i), place(d));
            let bar2 = d
                .get("regions")
                .and_then(Value::as_array)
                .and_then(|r| r.iter().find(|r| int(r, "bar") == Some(2)))
                .ok_or_else(|| invalid(format!("{name} at {here} has no BAR2")))?;
            let (Some(address), Some(size)) = (int(bar2, "address"), int(bar2, "size")) else {
                return Err(invalid(format!(
                    "BAR2 of {name} at {here} has no address or size"
                )));
            };
            if let Some(other) = &found[i] {
                return Err(invalid(format!(
                    "two devices with id {name}: at {} and {here}",
                    other.place
                )));
            }
            found[i] = Some(Found {
                parent,
                place: here,
                address,
                size,
            });
        }
        Ok(())
    }
}

/// System memory of a q35 machine with `size` bytes of RAM backed by one
/// file: below 4 GiB up to the PCI hole (2 GiB when the RAM has 2.75 GiB
/// or more, else 2.75 GiB), the rest from 4 GiB on, at the next offsets of
/// the file.
pub fn q35_ram(size: u64) -> Vec<RamRange> {
    const GIB: u64 = 1 << 30;
    let lowmem = if size >= 0xb000_0000 {
        2 * GIB
    } else {
        0xb000_0000
    };
    let low = size.min(lowmem);
    let mut ram = vec![RamRange {
        bus: 0,
        len: low,
        offset: 0,
    }];
    if size > low {
        ram.push(RamRange {
            bus: 4 * GIB,
            len: size - low,
            offset: low,
        });
    }
    ram.retain(|r| r.len > 0);
    ram
}

/// A QMP session on a UNIX socket.
struct Session {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Session {
    /// The next message that is not an asynchronous event.
    fn next(&mut self) -> Result<Value, QueryError> {
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| QueryError::NotReady(format!("reading from QMP: {e}")))?;
            if n == 0 {
                return Err(QueryError::NotReady("QMP closed the connection".into()));
            }
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line.trim())
                .map_err(|e| invalid(format!("QMP sent something that is not JSON ({e})")))?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    }

    /// Runs `command` and returns the value of its `return` member.
    fn execute(&mut self, command: &str) -> Result<Value, QueryError> {
        let mut msg = serde_json::json!({ "execute": command }).to_string();
        msg.push('\n');
        self.writer
            .write_all(msg.as_bytes())
            .map_err(|e| QueryError::NotReady(format!("sending {command} to QMP: {e}")))?;
        let mut reply = self.next()?;
        if let Some(e) = reply.get("error") {
            return Err(invalid(format!("QMP {command} failed: {e}")));
        }
        reply
            .get_mut("return")
            .map(Value::take)
            .ok_or_else(|| invalid(format!("QMP {command} got no return: {reply}")))
    }
}

/// Asks the QMP server at `path` for `query-pci` and returns the value of
/// its `return` member. Connecting is retried for up to `patience` (QEMU may
/// not listen yet); every read waits at most `timeout`.
pub fn query_pci(path: &Path, patience: Duration, timeout: Duration) -> Result<Value, QueryError> {
    let start = Instant::now();
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if start.elapsed() >= patience => {
                return Err(QueryError::NotReady(format!(
                    "connecting to QMP at {}: {e}",
                    path.display()
                )))
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    };
    let context =
        |e: std::io::Error| QueryError::NotReady(format!("QMP socket {}: {e}", path.display()));
    stream.set_read_timeout(Some(timeout)).map_err(context)?;
    stream.set_write_timeout(Some(timeout)).map_err(context)?;
    let writer = stream.try_clone().map_err(context)?;
    let mut s = Session {
        reader: BufReader::new(stream),
        writer,
    };
    let greeting = s.next()?;
    if greeting.get("QMP").is_none() {
        return Err(invalid(format!(
            "{} does not greet like QMP: {greeting}",
            path.display()
        )));
    }
    s.execute("qmp_capabilities")?;
    s.execute("query-pci")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::{P2p, Path as Route};
    use conflux_device::memory::Target;

    const FIXTURE: &str = include_str!("../tests/fixtures/query-pci.json");
    const MIB: u64 = 1 << 20;
    const BASES: [u64; 4] = [0xf400_0000, 0xf000_0000, 0xf800_0000, 0xec00_0000];

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).unwrap()
    }

    fn expected(zen: bool) -> Expected {
        Expected {
            devices: 4,
            bar_size: 64 * MIB,
            host_bridge_p2p: zen,
            ram: q35_ram(512 * MIB),
            plain: 0,
        }
    }

    /// Every `cfx{i}` BAR2 region of the fixture.
    fn bar2_regions(v: &mut Value) -> Vec<&mut Value> {
        let mut out = Vec::new();
        fn walk<'a>(v: &'a mut Value, out: &mut Vec<&'a mut Value>) {
            if v.get("bar").and_then(Value::as_u64) == Some(2) {
                out.push(v);
                return;
            }
            match v {
                Value::Object(m) => m.values_mut().for_each(|x| walk(x, out)),
                Value::Array(a) => a.iter_mut().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        walk(v, &mut out);
        out
    }

    #[test]
    fn fixture_gives_the_rig() {
        for zen in [false, true] {
            let t = expected(zen).topology(&fixture()).unwrap();
            assert_eq!(t.devices(), 4);
            for (i, base) in BASES.iter().enumerate() {
                assert_eq!(
                    t.bar(i),
                    Some(Bar {
                        base: *base,
                        size: 64 * MIB
                    })
                );
            }
            // The learned fabric decides every pair exactly like the named rig with the same
            // BARs: switch peers at distance 4, cfx3 only through a host bridge that allows it.
            let bars: Vec<Bar> = BASES
                .iter()
                .map(|&base| Bar {
                    base,
                    size: 64 * MIB,
                })
                .collect();
            let name = if zen {
                "switch3+rp1-zen"
            } else {
                "switch3+rp1"
            };
            let rig = Topology::rig(name, &bars, &q35_ram(512 * MIB)).unwrap();
            for a in 0..4 {
                for b in 0..4 {
                    assert_eq!(t.p2p(a, b), rig.p2p(a, b), "{a} <-> {b}");
                }
            }
            assert_eq!(t.p2p(0, 1), P2p::BusAddr { distance: 4 });
            // Routing follows: cfx1 from cfx0, cfx3 from cfx2 (zen only).
            let vram = |i: usize| BASES[i] + conflux_device::regs::VRAM_OFFSET;
            assert_eq!(t.route(0, vram(1), 4096).unwrap().path, Route::Peer);
            assert_eq!(t.route(2, vram(3), 4096).is_ok(), zen);
            assert_eq!(t.route(3, 0x1000, 4096).unwrap().path, Route::System);
            // Guest RAM ends at 512 MiB.
            assert!(t.route(3, 512 * MIB, 4096).is_err());
        }
    }

    #[test]
    fn the_whole_reply_or_its_return_value() {
        let v = fixture();
        let a = expected(false).topology(&v).unwrap();
        let b = expected(false).topology(&v["return"]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn fewer_devices_than_on_the_bus() {
        let e = Expected {
            devices: 2,
            ..expected(false)
        };
        let t = e.topology(&fixture()).unwrap();
        assert_eq!(t.devices(), 2);
        assert_eq!(t.p2p(0, 1), P2p::BusAddr { distance: 4 });
    }

    #[test]
    fn unassigned_bars_are_not_ready() {
        for unassigned in [Value::from(0), Value::from(-1), Value::from(u64::MAX)] {
            let mut v = fixture();
            let mut regions = bar2_regions(&mut v);
            regions[2]["address"] = unassigned.clone();
            let e = expected(false).topology(&v).unwrap_err();
            assert!(
                matches!(
                    &e,
                    QueryError::NotReady(s) if s.contains("cfx2") && s.contains("05:00.0")
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn unnumbered_bridges_hide_devices() {
        // Before the guest numbers the buses, QEMU lists no devices behind
        // the bridges.
        let mut v = fixture();
        v["return"][0]["devices"][2]["pci_bridge"]
            .as_object_mut()
            .unwrap()
            .remove("devices");
        let e = expected(false).topology(&v).unwrap_err();
        assert_eq!(
            e,
            QueryError::NotReady("no ivshmem function with id cfx3 on the bus yet".into())
        );
    }

    #[test]
    fn plain_function_is_found_on_the_root_bus() {
        let want = |zen| Expected {
            plain: 1,
            ..expected(zen)
        };
        assert_eq!(
            want(true).topology(&fixture()).unwrap_err(),
            QueryError::NotReady("no ivshmem function with id plain0 on the bus yet".into())
        );
        let mut v = fixture();
        let plain = serde_json::json!({
            "bus": 0, "slot": 5, "function": 0, "qdev_id": "plain0",
            "id": {"vendor": 0x1af4, "device": 0x1110},
            "regions": [{"bar": 2, "type": "memory", "address": 0xfe00_0000_u64,
                         "size": 4 * MIB}],
        });
        v["return"][0]["devices"]
            .as_array_mut()
            .unwrap()
            .push(plain);
        for zen in [false, true] {
            let t = want(zen).topology(&v).unwrap();
            assert_eq!(t.devices(), 4);
            let r = t.route(1, 0xfe00_0040, 64);
            if zen {
                let r = r.unwrap();
                assert_eq!((r.target, r.offset), (Target::Plain(0), 0x40));
            } else {
                assert!(r.is_err());
            }
        }
    }

    #[test]
    fn devices_nested_in_the_bus_member_are_found_too() {
        let mut v = fixture();
        let rp1 = &mut v["return"][0]["devices"][2]["pci_bridge"];
        let devices = rp1.as_object_mut().unwrap().remove("devices").unwrap();
        rp1["bus"]["devices"] = devices;
        let t = expected(false).topology(&v).unwrap();
        assert_eq!(t, expected(false).topology(&fixture()).unwrap());
    }

    #[test]
    fn contradictions_are_invalid() {
        let e = Expected {
            bar_size: 128 * MIB,
            ..expected(false)
        };
        let err = e.topology(&fixture()).unwrap_err();
        assert!(
            matches!(&err, QueryError::Invalid(s) if s.contains("cfx0") && s.contains("0x4000000")),
            "{err}"
        );
        // Overlapping BARs.
        let mut v = fixture();
        let mut regions = bar2_regions(&mut v);
        regions[1]["address"] = Value::from(BASES[0]);
        let err = expected(false).topology(&v).unwrap_err();
        assert!(
            matches!(&err, QueryError::Invalid(s) if s.contains("overlaps")),
            "{err}"
        );
        // Two cfx1.
        let mut v = fixture();
        v["return"][0]["devices"][2]["pci_bridge"]["devices"][0]["qdev_id"] = "cfx1".into();
        let err = expected(false).topology(&v).unwrap_err();
        assert!(
            matches!(&err, QueryError::Invalid(s) if s.contains("two devices with id cfx1")),
            "{err}"
        );
        // RAM over a BAR.
        let e = Expected {
            ram: q35_ram(4096 * MIB),
            ..expected(false)
        };
        assert!(e.topology(&fixture()).is_ok(), "RAM above 4 GiB is fine");
        let e = Expected {
            ram: vec![RamRange {
                bus: 0,
                len: 0xf000_1000,
                offset: 0,
            }],
            ..expected(false)
        };
        assert!(matches!(
            e.topology(&fixture()),
            Err(QueryError::Invalid(_))
        ));
        // Not a list.
        assert!(matches!(
            expected(false).topology(&Value::from(3)),
            Err(QueryError::Invalid(_))
        ));
        assert!(matches!(
            expected(false).topology(&serde_json::json!([{"bus": 0}])),
            Err(QueryError::Invalid(_))
        ));
    }

    #[test]
    fn other_ivshmem_devices_are_ignored() {
        let mut v = fixture();
        // A cfx-like id that is not ours, and an ivshmem without an id.
        v["return"][0]["devices"][2]["pci_bridge"]["devices"][0]["qdev_id"] = "cfx03".into();
        assert!(matches!(
            expected(false).topology(&v),
            Err(QueryError::NotReady(_))
        ));
        v["return"][0]["devices"][2]["pci_bridge"]["devices"][0]["qdev_id"] = "".into();
        let e = Expected {
            devices: 3,
            ..expected(false)
        };
        assert_eq!(e.topology(&v).unwrap().devices(), 3);
    }

    #[test]
    fn q35_ram_layout() {
        assert_eq!(
            q35_ram(512 * MIB),
            [RamRange {
                bus: 0,
                len: 512 * MIB,
                offset: 0
            }]
        );
        assert_eq!(q35_ram(0xb000_0000 - 1).len(), 1);
        assert_eq!(
            q35_ram(3 << 30),
            [
                RamRange {
                    bus: 0,
                    len: 2 << 30,
                    offset: 0
                },
                RamRange {
                    bus: 4 << 30,
                    len: 1 << 30,
                    offset: 2 << 30
                }
            ]
        );
        assert!(q35_ram(0).is_empty());
    }

    #[test]
    fn qmp_session_against_a_fake_server() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("cfx-qmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut w = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\r\n")
                .unwrap();
            let mut seen = Vec::new();
            for _ in 0..2 {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let cmd: Value = serde_json::from_str(&line).unwrap();
                let name = cmd["execute"].as_str().unwrap().to_string();
                // An event may come before any reply.
                w.write_all(b"{\"timestamp\": {}, \"event\": \"RESUME\"}\r\n")
                    .unwrap();
                let reply = if name == "query-pci" {
                    fixture()
                } else {
                    serde_json::json!({"return": {}})
                };
                w.write_all(format!("{reply}\r\n").as_bytes()).unwrap();
                seen.push(name);
            }
            seen
        });
        let v = query_pci(&path, Duration::from_secs(5), Duration::from_secs(5)).unwrap();
        assert_eq!(server.join().unwrap(), ["qmp_capabilities", "query-pci"]);
        assert_eq!(v, fixture()["return"]);
        // Nobody listens any more.
        std::fs::remove_file(&path).unwrap();
        let e = query_pci(&path, Duration::from_millis(50), Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(&e, QueryError::NotReady(s) if s.contains("qmp.sock")),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
