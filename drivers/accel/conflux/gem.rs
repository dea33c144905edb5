// SPDX-License-Identifier: GPL-2.0

//! Conflux buffer objects.

use kernel::{
    drm::{
        self,
        gem, //
    },
    prelude::*, //
};

use crate::driver::ConfluxDrm;

/// A Conflux buffer object. No ioctl creates one yet.
#[pin_data]
pub(crate) struct Bo {}

impl gem::DriverObject for Bo {
    type Driver = ConfluxDrm;
    type Args = ();

    fn new(_dev: &drm::Device<ConfluxDrm>, _size: usize, _args: ()) -> impl PinInit<Self, Error> {
        try_pin_init!(Bo {})
    }
}
