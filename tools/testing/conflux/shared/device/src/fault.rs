// SPDX-License-Identifier: GPL-2.0

//! Error types: device faults and configuration errors.

use std::fmt;

/// The cause of a device error, as stored in `ERR_CAUSE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Cause {
    /// The MMU could not translate a virtual address.
    Translation = 1,
    /// A write through a leaf entry without `WRITABLE`.
    Permission = 2,
    /// A peer's VRAM that the fabric does not let this device reach.
    PeerUnreachable = 3,
    /// An address that decodes to nothing.
    Bus = 4,
    /// A command slot the device does not accept.
    Malformed = 5,
    /// Ring registers that make no sense.
    RingState = 6,
}

impl Cause {
    /// Every cause, in the order of their codes.
    pub const ALL: [Cause; 6] = [
        Cause::Translation,
        Cause::Permission,
        Cause::PeerUnreachable,
        Cause::Bus,
        Cause::Malformed,
        Cause::RingState,
    ];

    /// The value stored in `ERR_CAUSE`.
    pub const fn code(self) -> u32 {
        self as u32
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Translation => "translation fault",
            Self::Permission => "permission fault",
            Self::PeerUnreachable => "peer unreachable",
            Self::Bus => "bus error",
            Self::Malformed => "malformed command",
            Self::RingState => "ring state invalid",
        })
    }
}

/// A fault raised while executing: its cause, the virtual address involved
/// (0 when none) and a description for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What went wrong.
    pub cause: Cause,
    /// The virtual address of the failing access, 0 when there is none.
    pub va: u64,
    /// What exactly went wrong, for humans.
    pub detail: String,
}

impl Fault {
    /// A fault without a virtual address.
    pub fn new(cause: Cause, detail: impl Into<String>) -> Self {
        Self {
            cause,
            va: 0,
            detail: detail.into(),
        }
    }

    /// The same fault at virtual address `va`.
    pub fn at(self, va: u64) -> Self {
        Self { va, ..self }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at VA {:#x}: {}", self.cause, self.va, self.detail)
    }
}

impl std::error::Error for Fault {}

/// An invalid topology or device configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}
