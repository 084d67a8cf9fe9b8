//! Trusted applications in their own address spaces (user mode, S-EL0).
//!
//! - [`image`]: what a TA is made of (segments, entry), found by UUID.
//! - [`resources`]: TA RAM pages and ASIDs, each guest's share.
//! - [`instance`]: one instance: its translation regime, its pages, its parameter spans.
//! - `run`: one entry of a TA and its traps (system calls, faults, TA to TA).
//!
//! Each session of a user TA has its own instance (OP-TEE's multi-instance TAs), owned by the
//! guest that opened it; a session a TA opens to another TA is owned by the first TA's
//! instance and charged to the same guest.

pub mod elf;
pub mod image;
pub mod instance;
pub mod resources;
pub(crate) mod run;

pub use image::{Segment, SegmentAccess, TaImage};
pub use instance::{Death, TaInstance};
pub use resources::TaResources;

use crate::entry::Tee;
use crate::error::TeeError;
use crate::platform::Platform;
use crate::sync::Mutex;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use teeshm_abi::GuestId;

/// The TAs the core knows and what their instances share.
#[derive(Debug)]
pub struct TaSystem {
    images: Mutex<BTreeMap<[u8; 16], Arc<TaImage>>>,
    resources: Arc<TaResources>,
}

impl TaSystem {
    /// No TA yet, with `resources` for instances.
    pub fn new(resources: TaResources) -> Self {
        Self {
            images: Mutex::new(BTreeMap::new()),
            resources: Arc::new(resources),
        }
    }

    /// The resources (for counters and tests).
    pub fn resources(&self) -> &TaResources {
        &self.resources
    }

    /// The image of `uuid`.
    pub fn image(&self, uuid: [u8; 16]) -> Option<Arc<TaImage>> {
        self.images.lock().get(&uuid).cloned()
    }

    /// Every TA's name and UUID.
    pub fn list(&self) -> alloc::vec::Vec<(&'static str, [u8; 16])> {
        self.images
            .lock()
            .values()
            .map(|i| (i.name, i.uuid))
            .collect()
    }
}

/// An open session as a guest holds it.
#[derive(Debug, Clone)]
pub enum Session {
    /// A session of the built-in pseudo-TA.
    Pta,
    /// A session of a user TA: its instance.
    User(Arc<TaInstance>),
}

impl<P: Platform> Tee<P> {
    /// Makes the TA of `image` known (early TAs, at boot).
    ///
    /// # Errors
    /// [`TeeError::BadParameters`] if a TA (or the pseudo-TA) has its UUID already.
    pub fn register_ta(&self, image: TaImage) -> Result<(), TeeError> {
        if image.uuid == crate::pta::MEMTEST_UUID {
            return Err(TeeError::BadParameters("the pseudo-TA has this UUID"));
        }
        let mut images = self.tas.images.lock();
        if images.contains_key(&image.uuid) {
            return Err(TeeError::BadParameters("a TA with this UUID exists"));
        }
        images.insert(image.uuid, Arc::new(image));
        Ok(())
    }

    /// The core's TAs.
    pub fn tas(&self) -> &TaSystem {
        &self.tas
    }

    /// A new instance of the TA `uuid` for `owner` (charged to `counters`), loaded and ready
    /// to run.
    pub(crate) fn new_ta_instance(
        &self,
        uuid: [u8; 16],
        owner: GuestId,
        counters: Arc<crate::guest::GuestCounters>,
    ) -> Result<Arc<TaInstance>, TeeError> {
        let image = self.tas.image(uuid).ok_or(TeeError::UnknownTa)?;
        TaInstance::new(
            image,
            owner,
            (counters, self.config.quotas.max_secure_bytes),
            self.tas.resources.clone(),
            &|asid| Box::new(self.platform.user_tlb(asid)),
            &|pa, data| {
                self.platform
                    .write_ta_ram(pa, data)
                    .map_err(TeeError::Access)
            },
        )
    }
}
