// SPDX-License-Identifier: GPL-2.0

//! The tables of `Documentation/accel/conflux/device.rst` must say what the
//! crate implements.

use std::collections::BTreeMap;

use conflux_device::{
    fault::Cause,
    regs::{self, bar0, ctrl, pte, slot},
};
use conflux_emu::{
    engine::Counters,
    server::{self, SERVE_OPTIONS},
};

/// The specification, found from the package's directory as cargo gives it
/// when it runs the test (the compile-time value may name another checkout
/// that shared the target directory).
fn spec_path() -> String {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    format!("{dir}/../../../../../Documentation/accel/conflux/device.rst")
}

/// The simple tables of a reStructuredText document: (section title, rows
/// of cells), header and continuation lines left out.
fn tables(doc: &str) -> Vec<(String, Vec<Vec<String>>)> {
    let lines: Vec<&str> = doc.lines().collect();
    let is_border =
        |l: &str| l.starts_with("==") && l.contains(' ') && l.chars().all(|c| c == '=' || c == ' ');
    let is_underline =
        |l: &str| l.len() >= 3 && (l.chars().all(|c| c == '=') || l.chars().all(|c| c == '-'));
    let (mut out, mut section, mut in_table, mut columns, mut rows) =
        (Vec::new(), String::new(), false, Vec::new(), Vec::new());
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).copied().unwrap_or("");
        if is_border(line) && !in_table {
            in_table = true;
            columns = line.match_indices(" =").map(|(at, _)| at + 1).collect();
            columns.insert(0, 0);
        } else if is_border(line) && !next.is_empty() {
            rows.clear(); // Those were the header.
        } else if is_border(line) {
            out.push((section.clone(), std::mem::take(&mut rows)));
            in_table = false;
        } else if in_table && !line.is_empty() && !line.starts_with(' ') {
            let cell = |k: usize| {
                let end = columns
                    .get(k + 1)
                    .copied()
                    .unwrap_or(line.len())
                    .min(line.len());
                line.get(columns[k].min(end)..end)
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            rows.push((0..columns.len()).map(cell).collect());
        } else if !in_table && !line.is_empty() && is_underline(next) {
            section = line.to_string();
        }
    }
    out
}

/// The rows of the `n`th table of `section`.
fn table(section: &str, n: usize) -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(spec_path()).unwrap();
    let found: Vec<_> = tables(&doc)
        .into_iter()
        .filter(|(s, _)| s == section)
        .collect();
    found
        .into_iter()
        .nth(n)
        .unwrap_or_else(|| panic!("no table {n} in section {section:?}"))
        .1
}

fn num(s: &str) -> u64 {
    let s = s.trim_matches('`');
    s.strip_prefix("0x").map_or_else(
        || s.parse().unwrap(),
        |h| u64::from_str_radix(h, 16).unwrap(),
    )
}

fn name(s: &str) -> String {
    s.trim_matches('`').to_string()
}

/// Checks that the first table of `section`, of fields (offset, size, owner, name), lists
/// `want`, (name, offset, size, owner), and that the fields are naturally aligned and do not
/// overlap.
fn field_table(section: &str, want: &[(&str, u64, u64, &str)]) {
    let got: Vec<_> = table(section, 0)
        .iter()
        .map(|r| (name(&r[3]), num(&r[0]), num(&r[1]), r[2].clone()))
        .collect();
    let want: Vec<_> = want
        .iter()
        .map(|&(n, o, s, w)| (n.to_string(), o, s, w.to_string()))
        .collect();
    assert_eq!(got, want);
    for w in want.windows(2) {
        assert_eq!(w[0].1 % w[0].2, 0);
        assert!(w[0].1 + w[0].2 <= w[1].1, "{} overlaps {}", w[0].0, w[1].0);
    }
}

#[test]
fn control_block_table() {
    use ctrl::*;
    let (d, h) = ("device", "driver");
    let want = [
        ("SIGNATURE", SIGNATURE, 8, d),
        ("VERSION", VERSION, 4, d),
        ("CAPS", CAPS, 4, d),
        ("BAR_SIZE", BAR_SIZE, 8, d),
        ("VRAM_OFFSET", VRAM_OFFSET, 8, d),
        ("VRAM_SIZE", VRAM_SIZE, 8, d),
        ("PRIV_OFFSET", PRIV_OFFSET, 8, d),
        ("PRIV_SIZE", PRIV_SIZE, 8, d),
        ("RING_OFFSET", RING_OFFSET, 8, h),
        ("RING_SIZE", RING_SIZE, 8, h),
        ("RING_HEAD", RING_HEAD, 4, h),
        ("RING_TAIL", RING_TAIL, 4, d),
        ("FENCE_SEQNO", FENCE_SEQNO, 8, d),
        ("MMU_ROOT", MMU_ROOT, 8, h),
        ("STATUS", STATUS, 4, d),
        ("CONTROL", CONTROL, 4, h),
        ("RING_POLL", RING_POLL, 4, d),
        ("QUEUES", QUEUES, 4, d),
        ("DOORBELL_OFFSET", DOORBELL_OFFSET, 8, d),
        ("ERR_VA", ERR_VA, 8, d),
        ("ERR_CAUSE", ERR_CAUSE, 4, d),
        ("ERR_OPCODE", ERR_OPCODE, 4, d),
        ("ERR_SEQNO", ERR_SEQNO, 8, d),
        ("CNT_LOCAL_BYTES", CNT_LOCAL_BYTES, 8, d),
        ("CNT_P2P_BYTES", CNT_P2P_BYTES, 8, d),
        ("CNT_SYSMEM_BYTES", CNT_SYSMEM_BYTES, 8, d),
        ("CNT_COMMANDS", CNT_COMMANDS, 8, d),
        ("CNT_ERRORS", CNT_ERRORS, 8, d),
        ("FAULTS", FAULTS, 4, "test"),
    ];
    field_table("Control block", &want);
    let doc = std::fs::read_to_string(spec_path()).unwrap();
    for (what, v) in [
        ("VERSION", VERSION_VALUE),
        ("STATUS READY", STATUS_READY),
        ("STATUS ERROR", STATUS_ERROR),
    ] {
        let text = match what {
            "VERSION" => format!("``{v:#010x}``"),
            "STATUS READY" => format!("READY`` ({v})"),
            _ => format!("ERROR`` ({v})"),
        };
        assert!(
            doc.contains(&text),
            "{what}: {text:?} not in the specification"
        );
    }
    assert!(doc.contains(std::str::from_utf8(&SIGNATURE_VALUE).unwrap()));
}

#[test]
fn bar_layout_table() {
    let got: Vec<u64> = table("BAR2 layout", 0).iter().map(|r| num(&r[0])).collect();
    assert_eq!(
        got,
        [
            0,
            regs::DEFAULT_RING_OFFSET,
            regs::DOORBELL_OFFSET,
            regs::PRIV_OFFSET,
            regs::VRAM_OFFSET
        ]
    );
    let sizes = table("BAR2 layout", 0);
    assert_eq!(num(&sizes[3][1]), regs::VRAM_OFFSET - regs::PRIV_OFFSET);
    assert_eq!(sizes[2][1], format!("{} KiB", regs::DOORBELL_SIZE >> 10));
    assert_eq!(
        sizes[1][1],
        format!("{} KiB", regs::DEFAULT_RING_SIZE >> 10)
    );
}

#[test]
fn bar0_table() {
    let got: Vec<_> = table("BAR0: doorbell registers", 0)
        .iter()
        .map(|r| (name(&r[1]), num(&r[0])))
        .collect();
    let want = [
        ("IntrMask", bar0::INTR_MASK),
        ("IntrStatus", bar0::INTR_STATUS),
        ("IVPosition", bar0::IV_POSITION),
        ("Doorbell", bar0::DOORBELL),
    ];
    assert_eq!(got, want.map(|(n, o)| (n.to_string(), o)));
    let vectors: Vec<_> = table("Interrupts", 0)
        .iter()
        .map(|r| (num(&r[0]), r[1].clone()))
        .collect();
    let want = [
        (bar0::VECTOR_COMPLETION, "completion"),
        (bar0::VECTOR_ERROR, "error"),
    ];
    assert_eq!(vectors, want.map(|(v, n)| (u64::from(v), n.to_string())));
}

#[test]
fn capability_table() {
    use ctrl::*;
    let caps = BTreeMap::from([
        ("COPY", CAP_COPY),
        ("FILL", CAP_FILL),
        ("FENCE", CAP_FENCE),
        ("TIMESTAMP", CAP_TIMESTAMP),
        ("MMU_2M", CAP_MMU_2M),
        ("PEER_P2P", CAP_PEER_P2P),
        ("MMU_NULL", CAP_MMU_NULL),
        ("QUEUES", CAP_QUEUES),
    ]);
    let rows = table("Capabilities", 0);
    assert_eq!(rows.len(), caps.len());
    for r in rows {
        assert_eq!(1 << num(&r[0]), caps[name(&r[1]).as_str()], "{r:?}");
    }
    assert_eq!(caps.values().fold(0, |a, b| a | b), CAP_ALL);
}

#[test]
fn slot_tables() {
    let got: Vec<_> = table("Command slots", 0)
        .iter()
        .map(|r| (name(&r[2]), num(&r[0]), num(&r[1])))
        .collect();
    let want = [
        ("opcode", slot::OPCODE, 4),
        ("flags", slot::FLAGS, 4),
        ("seqno", slot::SEQNO, 8),
        ("operand0", slot::OPERAND0, 8),
        ("operand1", slot::OPERAND1, 8),
        ("operand2", slot::OPERAND2, 8),
        (
            "reserved",
            slot::RESERVED,
            slot::SIZE as usize - slot::RESERVED,
        ),
    ];
    assert_eq!(
        got,
        want.map(|(n, o, s)| (n.to_string(), o as u64, s as u64))
    );
    let got: Vec<_> = table("Command slots", 1)
        .iter()
        .map(|r| (name(&r[1]), num(&r[0])))
        .collect();
    let want = [
        ("COPY", slot::OP_COPY),
        ("FILL", slot::OP_FILL),
        ("FENCE", slot::OP_FENCE),
        ("TIMESTAMP", slot::OP_TIMESTAMP),
        ("WRITE_VALUE", slot::OP_WRITE_VALUE),
        ("WAIT_VALUE", slot::OP_WAIT_VALUE),
    ];
    assert_eq!(got, want.map(|(n, o)| (n.to_string(), u64::from(o))));
}

#[test]
fn queue_register_table() {
    use regs::queue::*;
    let (d, h, b) = ("device", "driver", "driver, then device");
    let want = [
        ("Q_RING_VA", RING_VA, 8, h),
        ("Q_RING_SIZE", RING_SIZE, 8, h),
        ("Q_MMU_ROOT", MMU_ROOT, 8, h),
        ("Q_CONTROL", CONTROL, 4, h),
        ("Q_STATUS", STATUS, 4, d),
        ("Q_TAIL", TAIL, 4, b),
        ("Q_EVENTS", EVENTS, 4, d),
        ("Q_PROGRESS", PROGRESS, 8, b),
        ("Q_ERR_VA", ERR_VA, 8, d),
        ("Q_ERR_CAUSE", ERR_CAUSE, 4, d),
        ("Q_ERR_OPCODE", ERR_OPCODE, 4, d),
    ];
    field_table("Queue registers", &want);
    for w in want.windows(2) {
        assert_eq!(
            w[0].1 + w[0].2,
            w[1].1,
            "{} and {} leave a gap",
            w[0].0,
            w[1].0
        );
    }
    let last = &want[want.len() - 1];
    assert_eq!(last.1 + last.2, ctrl::QUEUE_BLOCK_SIZE);
    let text = section_text("User queues");
    for what in [
        "0 IDLE, 1 RUNNING, 2 PREEMPTED, 3 ERROR",
        "bit 0 ``ENABLE``, bit 1 ``PREEMPT``",
    ] {
        assert!(text.contains(what), "{what:?} not in the specification");
    }
    assert_eq!(
        (STATUS_IDLE, STATUS_RUNNING, STATUS_PREEMPTED, STATUS_ERROR),
        (0, 1, 2, 3)
    );
    assert_eq!((CONTROL_ENABLE, CONTROL_PREEMPT), (1, 2));
    let at = format!("``{:#x} + 64 * q``", ctrl::QUEUE_BLOCKS);
    assert!(text.contains(&at), "{at} not in the specification");
    assert!(text.contains(&format!("``QUEUES`` = {COUNT}")));
    assert!(text.contains("``DOORBELL_OFFSET + 4096 * q``"));
    assert_eq!(DOORBELL_PAGE, 4096);
}

#[test]
fn error_table() {
    let got: Vec<_> = table("Errors", 0)
        .iter()
        .map(|r| (num(&r[0]), r[1].clone()))
        .collect();
    assert_eq!(
        got,
        Cause::ALL.map(|c| (u64::from(c.code()), c.to_string()))
    );
}

#[test]
fn page_table_entry_table() {
    let mut reserved = 0;
    for r in table("MMU", 1) {
        let (hi, lo) = r[0]
            .split_once("..")
            .map_or_else(|| (num(&r[0]), num(&r[0])), |(h, l)| (num(h), num(l)));
        let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
        match name(&r[1]).as_str() {
            "VALID" => assert_eq!(mask, pte::VALID),
            "WRITABLE" => assert_eq!(mask, pte::WRITABLE),
            "LEAF" => assert_eq!(mask, pte::LEAF),
            "APERTURE" => assert_eq!(mask, pte::APERTURE_MASK),
            "address" => assert_eq!(mask, pte::ADDR_MASK),
            "reserved" => reserved |= mask,
            other => panic!("unknown entry field {other}"),
        }
    }
    assert_eq!(reserved, pte::RESERVED_MASK);
    let levels: Vec<_> = table("MMU", 0)
        .iter()
        .map(|r| (num(&r[0]), r[1].clone()))
        .collect();
    let want: Vec<_> = (0..4u32)
        .rev()
        .map(|l| (u64::from(l), format!("{}..{}", 20 + 9 * l, 12 + 9 * l)))
        .collect();
    assert_eq!(levels, want);
}

/// The text of `section` (up to the next section title), with every run of
/// white space made one space.
fn section_text(section: &str) -> String {
    let doc = std::fs::read_to_string(spec_path()).unwrap();
    let lines: Vec<&str> = doc.lines().collect();
    let title = |i: usize| {
        lines
            .get(i + 1)
            .is_some_and(|u| u.len() >= 3 && u.chars().all(|c| c == '=') && !lines[i].is_empty())
    };
    let start = (0..lines.len())
        .find(|&i| lines[i] == section && title(i))
        .unwrap_or_else(|| panic!("no section {section:?}"));
    let end = (start + 2..lines.len())
        .find(|&i| title(i))
        .unwrap_or(lines.len());
    lines[start + 2..end]
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn server_section() {
    let text = section_text("The server");
    let usage: Vec<&str> = server::USAGE.split_whitespace().collect();
    // The usage, up to the explanation of BYTES, is the documented one.
    let synopsis = usage[1..usage.iter().position(|w| *w == "BYTES:").unwrap()].join(" ");
    assert!(
        text.contains(&synopsis),
        "{synopsis:?} is not in the specification"
    );
    for opt in SERVE_OPTIONS {
        assert!(
            synopsis.contains(&format!("{opt} ")),
            "{opt} is not in the usage"
        );
    }
    assert!(text.contains(&format!("``{}``", server::READY)));
    // The counters line, with N for every number.
    let line = server::counters_line(7, &Counters::default())
        .replace("dev7", "dev{i}")
        .replace(" 0 ", " N ");
    assert!(text.contains(&line), "{line:?} is not in the specification");
    assert!(text.contains("``host memcpy SIZE: R MB/s``"));
    assert!(text.contains("``DIR/dev{i}.sock``"));
}
