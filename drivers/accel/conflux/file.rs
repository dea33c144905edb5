// SPDX-License-Identifier: GPL-2.0

//! An open file of a Conflux accel device.

use kernel::{
    drm,
    prelude::*, //
};

use crate::driver::ConfluxDrm;

/// A client of the accel device.
pub(crate) struct File;

impl drm::file::DriverFile for File {
    type Driver = ConfluxDrm;

    fn open(_dev: &drm::Device<ConfluxDrm>) -> Result<Pin<KBox<Self>>> {
        Ok(KBox::new(Self, GFP_KERNEL)?.into())
    }
}
