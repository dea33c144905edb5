// SPDX-License-Identifier: GPL-2.0

//! Conflux buffer objects.

use core::pin::Pin;

use kernel::{
    drm::{
        self,
        gem, //
    },
    gpu::buddy::AllocatedBlocks,
    prelude::*, //
};

use crate::driver::ConfluxDrm;

/// A Conflux buffer object in VRAM.
///
/// # Invariants
///
/// `vram` holds exactly the object's size, and was zeroed by the engine before the object was
/// created.
#[pin_data]
pub(crate) struct Bo {
    vram: Pin<KBox<AllocatedBlocks>>,
}

impl gem::DriverObject for Bo {
    type Driver = ConfluxDrm;
    type Args = Pin<KBox<AllocatedBlocks>>;

    fn new(
        _dev: &drm::Device<ConfluxDrm>,
        _size: usize,
        vram: Self::Args,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(Bo { vram })
    }
}
